//! Resource limits as RabbitMQ's operators write them: the memory high
//! watermark (a fraction of RAM or an absolute size), the free disk space
//! limit (an absolute size, or `mem_relative:F` times RAM), sizes with
//! RabbitMQ's information units, and the two measurements behind them.

use std::path::Path;

/// A setting that cannot be used as given (a size, a watermark, a limit,
/// an address), with what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

/// Parses a size as RabbitMQ's `parse_information_unit` does: digits and an
/// optional unit. `k`, `K`, `kiB`, `KiB`, `m`, `MiB`, `g`, `GiB`, `t`, `TiB`
/// (any case) are powers of 1024; `kB`, `KB`, `MB`, `GB`, `TB` (any case)
/// powers of 1000.
pub fn parse_size(s: &str) -> Result<u64, InvalidSetting> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 =
        num.parse().map_err(|_| InvalidSetting(format!("'{s}' is not a size (e.g. 512MiB, 1GB, 1073741824)")))?;
    let unit = unit.to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(InvalidSetting(format!(
                "'{s}': unknown unit '{unit}' (k, kB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB)"
            )))
        }
    };
    n.checked_mul(scale).ok_or_else(|| InvalidSetting(format!("'{s}' is too large")))
}

/// `--memory-high-watermark`: RabbitMQ's `vm_memory_high_watermark`
/// (`.relative`, a fraction of RAM) or `.absolute` (a size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    Fraction(f64),
    Bytes(u64),
}

impl std::str::FromStr for Watermark {
    type Err = InvalidSetting;

    /// A number below 1 is a fraction; a whole number or a size with a unit
    /// is bytes (`536870912`, `512MiB`, `1GB`).
    fn from_str(s: &str) -> Result<Self, InvalidSetting> {
        match s.trim().parse::<f64>() {
            Ok(f) if (0.0..1.0).contains(&f) => Ok(Watermark::Fraction(f)),
            Ok(f) if f >= 1.0 && f.is_finite() => Ok(Watermark::Bytes(f as u64)),
            Ok(_) => Err(InvalidSetting(format!("'{s}': a fraction in [0, 1) or a size"))),
            Err(_) => parse_size(s).map(Watermark::Bytes),
        }
    }
}

impl Watermark {
    /// The threshold in bytes (None: the machine's RAM cannot be read).
    pub fn bytes(self) -> Option<u64> {
        match self {
            Watermark::Bytes(b) => Some(b),
            Watermark::Fraction(f) => Some((total_memory()? as f64 * f) as u64),
        }
    }
}

/// `--disk-free-limit`: RabbitMQ's `disk_free_limit.absolute` (a size) or
/// `.relative` (`mem_relative:1.5`: that many times the machine's RAM).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskFreeLimit {
    Absolute(u64),
    MemRelative(f64),
}

impl std::str::FromStr for DiskFreeLimit {
    type Err = InvalidSetting;

    fn from_str(s: &str) -> Result<Self, InvalidSetting> {
        let s = s.trim();
        let relative = s.strip_prefix("mem_relative:").or_else(|| s.strip_prefix("mem_relative "));
        match relative {
            Some(f) => match f.trim().parse::<f64>() {
                Ok(f) if f >= 0.0 && f.is_finite() => Ok(DiskFreeLimit::MemRelative(f)),
                _ => Err(InvalidSetting(format!(
                    "'{s}': mem_relative takes a non-negative number, e.g. mem_relative:1.5"
                ))),
            },
            None => parse_size(s).map(DiskFreeLimit::Absolute),
        }
    }
}

impl DiskFreeLimit {
    /// The limit in bytes (a relative limit without a readable RAM size
    /// falls back to RabbitMQ's default, 50 MB).
    pub fn bytes(self) -> u64 {
        match self {
            DiskFreeLimit::Absolute(b) => b,
            DiskFreeLimit::MemRelative(f) => total_memory().map_or(50_000_000, |m| (m as f64 * f) as u64),
        }
    }
}

/// The machine's RAM, from /proc/meminfo.
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes an unprivileged process may still write on the filesystem that
/// holds `path` (statvfs: available blocks × fragment size).
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable memory
    // the size of a statvfs, which the call fills in when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The process's resident memory, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Open file descriptors of this process, and the limit on them.
pub fn file_descriptors() -> (u64, u64) {
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    (open, l.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_rabbitmq_reads_them() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("100kB"), Ok(100_000));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("3G"), Ok(3 << 30));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("-5MB").is_err());
        assert!(parse_size("99999999999999999999TB").is_err());
    }

    #[test]
    fn watermark_forms() {
        assert_eq!("0.4".parse(), Ok(Watermark::Fraction(0.4)));
        assert_eq!("536870912".parse(), Ok(Watermark::Bytes(536_870_912)));
        assert_eq!("512MiB".parse(), Ok(Watermark::Bytes(512 << 20)));
        assert_eq!("1GB".parse(), Ok(Watermark::Bytes(1_000_000_000)));
        assert!("-1".parse::<Watermark>().is_err());
        assert!("lots".parse::<Watermark>().is_err());
        assert!(Watermark::Fraction(0.4).bytes().unwrap() > 0);
    }

    #[test]
    fn disk_free_limit_forms() {
        assert_eq!("50MB".parse(), Ok(DiskFreeLimit::Absolute(50_000_000)));
        assert_eq!("2GiB".parse(), Ok(DiskFreeLimit::Absolute(2 << 30)));
        assert_eq!("mem_relative:1.5".parse(), Ok(DiskFreeLimit::MemRelative(1.5)));
        assert!("mem_relative:x".parse::<DiskFreeLimit>().is_err());
        assert!(DiskFreeLimit::MemRelative(1.0).bytes() > 0);
        assert!(free_disk_bytes(Path::new("/")).is_some());
        assert!(free_disk_bytes(Path::new("/no/such/dir")).is_none());
    }
}
