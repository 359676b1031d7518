//! Transport addresses as users write them: `tcp:HOST:PORT`, `vsock:CID:PORT`.

use std::{fmt, str::FromStr};

/// Where an agent connects or a host listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP: a host name or IP address (IPv6 in brackets) and a port.
    Tcp {
        /// Host name or address, without brackets.
        host: String,
        /// Port.
        port: u16,
    },
    /// vsock: a context id and a port.
    Vsock {
        /// Context id (2 = the host, `any` = u32::MAX when listening).
        cid: u32,
        /// Port.
        port: u32,
    },
}

/// An address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad address {input:?}: {reason} (expected tcp:HOST:PORT or vsock:CID:PORT)")]
pub struct EndpointError {
    input: String,
    reason: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let err = |reason| EndpointError {
            input: s.to_owned(),
            reason,
        };
        let (scheme, rest) = s.split_once(':').ok_or(err("no scheme"))?;
        let (host, port) = rest.rsplit_once(':').ok_or(err("no port"))?;
        match scheme {
            "tcp" => {
                // IPv6 literals come bracketed: the last colon is the port's.
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                if host.is_empty() {
                    return Err(err("empty host"));
                }
                let port = port.parse().map_err(|_| err("bad TCP port"))?;
                Ok(Endpoint::Tcp {
                    host: host.to_owned(),
                    port,
                })
            }
            "vsock" => {
                let cid = match host {
                    "any" => u32::MAX,
                    _ => host.parse().map_err(|_| err("bad vsock CID"))?,
                };
                let port = port.parse().map_err(|_| err("bad vsock port"))?;
                Ok(Endpoint::Vsock { cid, port })
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for (text, want) in [
            (
                "tcp:127.0.0.1:7000",
                Endpoint::Tcp {
                    host: "127.0.0.1".into(),
                    port: 7000,
                },
            ),
            (
                "tcp:[::1]:7000",
                Endpoint::Tcp {
                    host: "::1".into(),
                    port: 7000,
                },
            ),
            (
                "tcp:host.example:1",
                Endpoint::Tcp {
                    host: "host.example".into(),
                    port: 1,
                },
            ),
            ("vsock:2:5000", Endpoint::Vsock { cid: 2, port: 5000 }),
        ] {
            let got: Endpoint = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), text);
        }
        assert_eq!(
            "vsock:any:1".parse::<Endpoint>().unwrap(),
            Endpoint::Vsock {
                cid: u32::MAX,
                port: 1
            }
        );
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "",
            "tcp:",
            "tcp:host",
            "tcp::80",
            "tcp:h:99999",
            "udp:h:1",
            "vsock:x:1",
            "vsock:2:-1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
