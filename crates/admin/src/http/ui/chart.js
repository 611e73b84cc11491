// A small line chart on a canvas: series of [timestamp ms, value] points,
// time on the x axis, a zero-based y axis with a few gridlines.
'use strict';

const Chart = {
  colors: ['#2f6fdf', '#e8833a', '#2a9d6f', '#b3261e', '#8a5cc7', '#5b6578'],

  // series: [{label, points: [[t, v], ...]}]
  draw(canvas, series, unit) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
    if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 56, right = 10, top = 10, bottom = 22;
    const all = series.flatMap(s => s.points);
    const t1 = all.length ? Math.max(...all.map(p => p[0])) : Date.now();
    const t0 = all.length ? Math.min(...all.map(p => p[0])) : t1 - 60000;
    const vmax = Math.max(1, ...all.map(p => p[1]));
    const top_ = Chart.niceCeil(vmax);
    const x = t => left + (w - left - right) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
    const y = v => top + (h - top - bottom) * (1 - v / top_);
    g.font = '11px system-ui, sans-serif';
    g.strokeStyle = '#e6e9ef'; g.fillStyle = '#5b6578'; g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = top_ * i / 4, yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
      g.fillText(Chart.short(v) + (unit || ''), 4, yy + 4);
    }
    const span = (t1 - t0) / 1000;
    g.fillText(span > 0 ? `last ${Math.round(span)} s` : 'waiting for samples', left, h - 6);
    series.forEach((s, i) => {
      if (!s.points.length) return;
      g.strokeStyle = Chart.colors[i % Chart.colors.length]; g.lineWidth = 2;
      g.beginPath();
      s.points.forEach((p, j) => (j ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
      g.stroke();
    });
  },

  legend(el, series, fmt) {
    el.innerHTML = '';
    series.forEach((s, i) => {
      const last = s.points.length ? s.points[s.points.length - 1][1] : 0;
      const span = document.createElement('span');
      const sw = document.createElement('i');
      sw.style.background = Chart.colors[i % Chart.colors.length];
      span.append(sw, `${s.label}: ${fmt ? fmt(last) : last}`);
      el.append(span);
    });
  },

  niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  },

  short(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + 'M';
    if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + 'k';
    return String(Math.round(v * 10) / 10);
  },
};
