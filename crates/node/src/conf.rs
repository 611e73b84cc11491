//! RabbitMQ's configuration file (`rabbitmq.conf`, the "new style": one
//! `key = value` per line, `#` comment lines), read as Warren's settings:
//! each key Warren implements becomes the command-line flag it stands for
//! (`heartbeat = 30` is `--heartbeat 30`), so the file goes through the
//! same parsing and checks as flags. Keys of Warren's own settings are
//! `warren.` and the flag's name (`warren.data_dir = /var/lib/warren`). A
//! key Warren does not implement is reported (with its line) for a warning,
//! never an error, so an existing rabbitmq.conf works unchanged; what is
//! not `key = value` is an error naming the file and line.

use std::path::{Path, PathBuf};

/// A line of the file, as a flag and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The long flag, without dashes (`heartbeat`, `amqp-listen`).
    pub flag: String,
    pub value: String,
    /// The key that set it, and its line.
    pub key: String,
    pub line: usize,
}

/// What a file says.
#[derive(Debug, Default)]
pub struct ConfFile {
    pub settings: Vec<Setting>,
    /// Keys Warren does not implement, with their lines and why.
    pub ignored: Vec<(String, usize, &'static str)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {what}", path.display())]
    Syntax { path: PathBuf, line: usize, what: String },
}

/// Reads a rabbitmq.conf. `known` tells whether a long flag exists (for
/// `warren.*` keys).
pub fn read(path: &Path, known: &dyn Fn(&str) -> bool) -> Result<ConfFile, ConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfError::Read { path: path.to_owned(), source })?;
    parse(&text, known).map_err(|(line, what)| ConfError::Syntax { path: path.to_owned(), line, what })
}

/// What is unsupported, and why (for the warning).
const NO_CLIENT_CERTS_API: &str = "Warren's HTTPS API takes a certificate and key only (no client certificates)";
const NOT_IMPLEMENTED: &str = "not implemented by Warren";

/// Parses the text of a file; an error is its line and what is wrong.
pub fn parse(text: &str, known: &dyn Fn(&str) -> bool) -> Result<ConfFile, (usize, String)> {
    let mut out = ConfFile::default();
    // Keys that combine into one flag: (ip, port) pairs.
    let mut management = (None, None);
    let mut management_ssl = (None, None);
    let mut prometheus = (None, None);
    let mut loopback: Option<(Vec<String>, String, usize)> = None;
    let mut ssl_verify_peer = false;
    let mut fail_if_no_peer_cert = None;
    // auth_mechanisms.N = NAME, in the order of N.
    let mut mechanisms: Vec<(u32, String, String, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err((line, format!("expected `key = value`, found {l:?}")));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err((line, format!("bad key {key:?}")));
        }
        if value.is_empty() {
            return Err((line, format!("{key} has no value")));
        }
        let mut set = |flag: &str, value: String| {
            out.settings.push(Setting { flag: flag.to_owned(), value, key: key.to_owned(), line });
        };
        let number = |what: &str| -> Result<String, (usize, String)> {
            value
                .parse::<f64>()
                .map(|_| value.to_owned())
                .map_err(|_| (line, format!("{what} must be a number, not {value:?}")))
        };
        let parts: Vec<&str> = key.split('.').collect();
        match parts.as_slice() {
            ["listeners", "tcp"] if value == "none" => set("amqp-listen", "none".into()),
            ["listeners", "ssl"] if value == "none" => {}
            ["listeners", "tcp", _] => set("amqp-listen", listen_address(value).map_err(|e| (line, e))?),
            ["listeners", "ssl", _] => set("amqps-listen", listen_address(value).map_err(|e| (line, e))?),
            ["ssl_options", "cacertfile"] => set("tls-ca", value.to_owned()),
            ["ssl_options", "certfile"] => set("tls-cert", value.to_owned()),
            ["ssl_options", "keyfile"] => set("tls-key", value.to_owned()),
            ["ssl_options", "verify"] => match value {
                "verify_peer" => ssl_verify_peer = true,
                "verify_none" => {}
                _ => return Err((line, format!("ssl_options.verify is verify_peer or verify_none, not {value:?}"))),
            },
            ["ssl_options", "fail_if_no_peer_cert"] => {
                fail_if_no_peer_cert = Some((boolean(value).map_err(|e| (line, e))?, line))
            }
            ["default_user"] => set("default-user", value.to_owned()),
            ["default_pass"] => set("default-pass", value.to_owned()),
            ["default_vhost"] => set("default-vhost", value.to_owned()),
            ["default_permissions", what @ ("configure" | "read" | "write")] => {
                set(&format!("default-permissions-{what}"), value.to_owned())
            }
            ["loopback_users"] if value == "none" => loopback = Some((Vec::new(), key.to_owned(), line)),
            ["loopback_users", user] => {
                let (users, _, _) = loopback.get_or_insert_with(|| (vec!["guest".to_owned()], key.to_owned(), line));
                users.retain(|u| u != user);
                if boolean(value).map_err(|e| (line, e))? {
                    users.push((*user).to_owned());
                }
            }
            ["auth_mechanisms", n] => {
                let n = n.parse::<u32>().map_err(|_| (line, format!("{key}: the index must be a number")))?;
                mechanisms.push((n, value.to_owned(), key.to_owned(), line));
            }
            ["ssl_cert_login_from"] => set("ssl-cert-login-from", value.to_owned()),
            ["vm_memory_high_watermark", "relative"] => set("memory-high-watermark", number("a relative watermark")?),
            ["vm_memory_high_watermark", "absolute"] => set("memory-high-watermark", value.to_owned()),
            ["vm_memory_high_watermark_paging_ratio"] => set("memory-paging-ratio", number("a paging ratio")?),
            ["disk_free_limit", "absolute"] => set("disk-free-limit", value.to_owned()),
            ["disk_free_limit", "relative"] => {
                set("disk-free-limit", format!("mem_relative:{}", number("a relative limit")?))
            }
            ["heartbeat"] => set("heartbeat", value.to_owned()),
            ["frame_max"] => set("frame-max", value.to_owned()),
            ["channel_max"] => set("channel-max", value.to_owned()),
            ["max_message_size"] => set("max-message-size", value.to_owned()),
            ["connection_max"] => {
                set("max-connections", if value == "infinity" { "0".into() } else { value.to_owned() })
            }
            ["management", "tcp", "port"] => management.1 = Some((value.to_owned(), key.to_owned(), line)),
            ["management", "tcp", "ip"] => management.0 = Some(value.to_owned()),
            ["management", "ssl", "port"] => management_ssl.1 = Some((value.to_owned(), key.to_owned(), line)),
            ["management", "ssl", "ip"] => management_ssl.0 = Some(value.to_owned()),
            ["management", "ssl", "certfile"] => set("https-cert", value.to_owned()),
            ["management", "ssl", "keyfile"] => set("https-key", value.to_owned()),
            ["management", "ssl", ..] => out.ignored.push((key.to_owned(), line, NO_CLIENT_CERTS_API)),
            ["prometheus", "tcp", "port"] => prometheus.1 = Some((value.to_owned(), key.to_owned(), line)),
            ["prometheus", "tcp", "ip"] => prometheus.0 = Some(value.to_owned()),
            ["load_definitions"] => set("load-definitions", value.to_owned()),
            ["log", "console"] | ["log", "file", "rotation", ..] => {}
            ["log", "console" | "file", "level"] => set("log-level", log_level(value).map_err(|e| (line, e))?),
            ["log", "file"] if value == "false" => {}
            ["log", "file"] => set("log-file", value.to_owned()),
            ["warren", rest @ ..] => {
                let flag = rest.join("-").replace('_', "-");
                if !known(&flag) {
                    return Err((line, format!("{key} names no Warren setting (--{flag})")));
                }
                set(&flag, value.to_owned());
            }
            _ => out.ignored.push((key.to_owned(), line, NOT_IMPLEMENTED)),
        }
    }
    for (flag, (ip, port)) in
        [("http-listen", management), ("https-listen", management_ssl), ("prometheus-listen", prometheus)]
    {
        if let Some((port, key, line)) = port {
            let ip = ip.unwrap_or_else(|| "0.0.0.0".into());
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
            out.settings.push(Setting { flag: flag.into(), value: format!("{host}:{port}"), key, line });
        }
    }
    mechanisms.sort_by_key(|m| m.0);
    if let Some((_, _, key, line)) = mechanisms.first().cloned() {
        let value = mechanisms.iter().map(|m| m.1.as_str()).collect::<Vec<_>>().join(",");
        out.settings.push(Setting { flag: "auth-mechanisms".into(), value, key, line });
    }
    if let Some((users, key, line)) = loopback {
        out.settings.push(Setting { flag: "loopback-users".into(), value: users.join(","), key, line });
    }
    // RabbitMQ's verify_peer asks for a certificate; with
    // fail_if_no_peer_cert it requires one (Warren's --tls-verify-peer).
    if let (true, Some((true, line))) = (ssl_verify_peer, fail_if_no_peer_cert) {
        out.settings.push(Setting {
            flag: "tls-verify-peer".into(),
            value: "true".into(),
            key: "ssl_options.fail_if_no_peer_cert".into(),
            line,
        });
    }
    Ok(out)
}

/// `5672` (every interface, as RabbitMQ), `127.0.0.1:5672`, `::1:5672`.
fn listen_address(value: &str) -> Result<String, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(format!("0.0.0.0:{port}"));
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(|| format!("bad listener address {value:?}"))?;
    port.parse::<u16>().map_err(|_| format!("bad listener port in {value:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected true or false, not {value:?}")),
    }
}

/// RabbitMQ's log levels, as tracing's.
fn log_level(value: &str) -> Result<String, String> {
    Ok(match value {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        "error" | "critical" | "alert" | "emergency" => "error",
        "none" => "off",
        _ => return Err(format!("unknown log level {value:?}")),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(text: &str) -> Vec<(String, String)> {
        parse(text, &|f| f == "data-dir").unwrap().settings.into_iter().map(|s| (s.flag, s.value)).collect()
    }

    #[test]
    fn rabbitmq_keys_become_flags() {
        let got = flags(
            "# a comment\n\
             listeners.tcp.default = 5673\n\
             heartbeat = 30\n\
             vm_memory_high_watermark.relative = 0.6\n\
             disk_free_limit.relative = 1.5\n\
             connection_max = infinity\n\
             management.tcp.port = 15673\n\
             management.tcp.ip = ::1\n\
             loopback_users.guest = false\n\
             loopback_users.admin = true\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             log.console.level = warning\n\
             auth_mechanisms.2 = EXTERNAL\n\
             auth_mechanisms.1 = PLAIN\n\
             ssl_cert_login_from = common_name\n\
             warren.data_dir = /var/lib/warren\n",
        );
        let want: Vec<(String, String)> = [
            ("amqp-listen", "0.0.0.0:5673"),
            ("heartbeat", "30"),
            ("memory-high-watermark", "0.6"),
            ("disk-free-limit", "mem_relative:1.5"),
            ("max-connections", "0"),
            ("log-level", "warn"),
            ("ssl-cert-login-from", "common_name"),
            ("data-dir", "/var/lib/warren"),
            ("http-listen", "[::1]:15673"),
            ("auth-mechanisms", "PLAIN,EXTERNAL"),
            ("loopback-users", "admin"),
            ("tls-verify-peer", "true"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_keys_are_reported_and_bad_lines_refused() {
        let f = parse("mqtt.listeners.tcp.default = 1883\nmanagement.ssl.verify = verify_peer\n", &|_| false).unwrap();
        let ignored: Vec<_> = f.ignored.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
        assert_eq!(ignored, [("mqtt.listeners.tcp.default", 1), ("management.ssl.verify", 2)]);
        assert_eq!(parse("heartbeat = 1\nnot a setting\n", &|_| false).unwrap_err().0, 2);
        assert_eq!(parse("heartbeat =\n", &|_| false).unwrap_err().0, 1);
        assert!(parse("warren.no_such_thing = 1\n", &|_| false).unwrap_err().1.contains("--no-such-thing"));
        assert!(parse("vm_memory_high_watermark.relative = lots\n", &|_| true).is_err());
    }
}
