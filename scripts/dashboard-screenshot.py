#!/usr/bin/env python3
"""Takes docs/dashboard.png: a fresh Warren, a minute of traffic (a
publisher at a rising rate, a consumer acking a little slower, so a
backlog grows), then the overview page in headless Chromium.

    .venv/bin/python scripts/dashboard-screenshot.py [OUT.png]
"""
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pika
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "dashboard.png")
SECONDS = 65


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    subprocess.run(["cargo", "build", "--quiet", "-p", "warren"], cwd=ROOT, check=True)
    port, hport, data = free_port(), free_port(), tempfile.mkdtemp()
    proc = subprocess.Popen([str(ROOT / "target/debug/warren"), "--amqp-listen", f"127.0.0.1:{port}",
                             "--http-listen", f"127.0.0.1:{hport}", "--prometheus-listen", "", "--data-dir", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    stop = time.time() + SECONDS
    params = pika.ConnectionParameters(port=port)

    def publish():
        c = pika.BlockingConnection(params)
        ch = c.channel()
        ch.queue_declare("orders", durable=True)
        ch.queue_declare("emails")
        ch.confirm_delivery()
        t0 = time.time()
        while time.time() < stop:
            rate = 50 + 10 * (time.time() - t0)
            for q in ("orders", "emails"):
                ch.basic_publish("", q, b"x" * 200, pika.BasicProperties(delivery_mode=2 if q == "orders" else 1))
            time.sleep(1 / rate)
        c.close()

    def consume():
        c = pika.BlockingConnection(params)
        ch = c.channel()
        ch.basic_qos(prefetch_count=50)
        ch.queue_declare("orders", durable=True)
        n = 0
        for m, _, _ in ch.consume("orders", inactivity_timeout=1):
            if time.time() > stop:
                break
            if m:
                n += 1
                ch.basic_ack(m.delivery_tag)
                time.sleep(0.012)
        c.close()

    threads = [threading.Thread(target=publish), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    profile = tempfile.mkdtemp()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1280,1100"):
        opts.add_argument(flag)
    d = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
    try:
        d.get(f"http://127.0.0.1:{hport}/")
        d.find_element("id", "username").send_keys("guest")
        d.find_element("id", "password").send_keys("guest")
        d.find_element("id", "login-button").click()
        time.sleep(3)
        d.save_screenshot(OUT)
        print("wrote", OUT)
    finally:
        d.quit()
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(profile, ignore_errors=True)


main()
