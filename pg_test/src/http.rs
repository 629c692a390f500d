//! A plain HTTP/1.1 GET over `std::net::TcpStream` for the agents' metrics and health endpoints
//! (`ha.metrics_address`), and a reader of the Prometheus text format they serve.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{err, Result};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A response: status code, header lines, body.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<String>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` from `addr` ("host:port"), reading until the server closes the connection.
pub fn http_get(addr: &str, path: &str) -> Result<HttpResponse> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| err(format!("bad address {addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pg_test\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(|_| err(format!("{addr}{path}: not UTF-8")))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err(format!("{addr}{path}: no end of headers in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err(format!("{addr}{path}: bad status line {status_line:?}")))?;
    Ok(HttpResponse {
        status,
        headers: lines.map(str::to_string).collect(),
        body: body.to_string(),
    })
}

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a `/metrics` body, with the families that have `# HELP` and `# TYPE` lines.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
    pub helped: Vec<String>,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return Ok(out);
        }
        if chars.next() != Some('"') {
            return Err(err(format!("label {key} has no quoted value in {{{s}}}")));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => return Err(err(format!("bad escape in {{{s}}}"))),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err(err(format!("unterminated label value in {{{s}}}"))),
            }
        }
        out.insert(key.trim().to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| err(format!("bad TYPE line {line:?}")))?;
                m.types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                m.helped
                    .push(rest.split(' ').next().unwrap_or_default().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| err(format!("bad sample line {line:?}")))?;
            let value: f64 = value
                .parse()
                .map_err(|_| err(format!("bad value in {line:?}")))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (
                    n,
                    parse_labels(
                        rest.strip_suffix('}')
                            .ok_or_else(|| err(format!("bad labels in {line:?}")))?,
                    )?,
                ),
                None => (series, BTreeMap::new()),
            };
            m.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Ok(m)
    }

    /// The samples of metric `name`.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The value of `label` on the samples of `name` whose value is 1 (e.g. the leader's name).
    pub fn label_where_one(&self, name: &str, label: &str) -> Vec<String> {
        self.series(name)
            .into_iter()
            .filter(|s| s.value == 1.0)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let m = Metrics::parse(
            "# HELP a_total x\n# TYPE a_total counter\na_total 3\nb{node=\"n\\\"1\",role=\"leader\"} 1\nc 1.5e9\n",
        )
        .unwrap();
        assert_eq!(m.get("a_total", &[]), Some(3.0));
        assert_eq!(
            m.get("b", &[("node", "n\"1"), ("role", "leader")]),
            Some(1.0)
        );
        assert_eq!(m.get("b", &[("node", "n\"1")]), None);
        assert_eq!(m.get("c", &[]), Some(1.5e9));
        assert_eq!(m.types.get("a_total").map(String::as_str), Some("counter"));
        assert_eq!(m.label_where_one("b", "node"), vec!["n\"1".to_string()]);
        assert!(Metrics::parse("x{a=1} 2").is_err());
    }
}
