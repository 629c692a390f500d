//! Validation of pg_ha's settings (`ha.*` GUCs), as pure functions.
//!
//! The GUC layer (`pg::gucs`) calls these from check hooks and from `_PG_init`, so a malformed value is a
//! clear configuration error at start or reload, never a panic deep inside the agent.

use std::fmt;

/// A `host:port` agent address, as written in `ha.agent_address` and `ha.peers`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl AgentAddr {
    /// URI tonic connects to.
    pub fn uri(&self) -> String {
        format!("http://{self}")
    }
}

/// Parse `host:port` (IPv6 as `[addr]:port`). Errors name what is wrong.
pub fn parse_agent_addr(text: &str) -> Result<AgentAddr, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty address; expected host:port, e.g. 10.0.0.1:5480".into());
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("\"{t}\" is not [ipv6]:port"))?;
        (h, p)
    } else {
        t.rsplit_once(':')
            .ok_or_else(|| format!("\"{t}\" has no port; expected host:port"))?
    };
    if host.is_empty() {
        return Err(format!("\"{t}\" has an empty host; expected host:port"));
    }
    if !t.starts_with('[') && host.contains(':') {
        return Err(format!("\"{t}\": write an IPv6 address as [addr]:port"));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(format!("\"{t}\": invalid character '{bad}' in host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("\"{t}\": port \"{port}\" is not a number between 1 and 65535"))?;
    if port == 0 {
        return Err(format!("\"{t}\": port 0 is not allowed"));
    }
    Ok(AgentAddr {
        host: host.to_string(),
        port,
    })
}

/// Parse `ha.metrics_address`: empty (or only blanks) means metrics are off; otherwise `host:port` like
/// `ha.agent_address`.
pub fn parse_metrics_addr(text: &str) -> Result<Option<AgentAddr>, String> {
    if text.trim().is_empty() {
        Ok(None)
    } else {
        parse_agent_addr(text).map(Some)
    }
}

/// Parse the comma-separated `ha.peers` list. Empty entries and duplicates are errors: they are typos.
pub fn parse_peers(text: &str) -> Result<Vec<AgentAddr>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<AgentAddr> = Vec::new();
    for (i, part) in text.split(',').enumerate() {
        if part.trim().is_empty() {
            return Err(format!("entry {} is empty (stray comma?)", i + 1));
        }
        let a = parse_agent_addr(part).map_err(|e| format!("entry {}: {e}", i + 1))?;
        if out.contains(&a) {
            return Err(format!("entry {}: {a} is listed twice", i + 1));
        }
        out.push(a);
    }
    Ok(out)
}

/// Node names are also `application_name`s and appear in `synchronous_standby_names`, so keep them to
/// characters that need no quoting there.
pub fn validate_node_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("ha.node_name must be set to this node's unique name".into());
    }
    if text.len() > 63 {
        return Err(format!("\"{text}\" is longer than 63 bytes"));
    }
    if !text.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("\"{text}\" must start with a letter"));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "\"{text}\": invalid character '{bad}' (use letters, digits and _)"
        ));
    }
    Ok(())
}

/// Zones label nodes for zone policies; same character rules as node names.
pub fn validate_zone(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 63 {
        return Err("ha.zone must be 1 to 63 bytes".into());
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!("\"{text}\": invalid character '{bad}' in zone"));
    }
    Ok(())
}

/// `ha.systemd_unit`: empty (the server is run by bare `pg_ctl`), or the systemd service that runs this
/// server, e.g. `postgresql@15-main` or `postgresql@15-main.service`. Returns the unit's full name.
pub fn parse_systemd_unit(text: &str) -> Result<Option<String>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let full = if t.ends_with(".service") {
        t.to_string()
    } else if t.contains('.') && !t.contains('@') {
        return Err(format!(
            "\"{t}\" is not a service unit; expected e.g. postgresql@15-main"
        ));
    } else {
        format!("{t}.service")
    };
    let stem = &full[..full.len() - ".service".len()];
    if full.len() > 255 {
        return Err(format!("\"{t}\" is longer than 255 bytes"));
    }
    if let Some(bad) = stem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '@')))
    {
        return Err(format!(
            "\"{t}\": invalid character '{bad}' in a unit name (use letters, digits and : _ . - @)"
        ));
    }
    match stem.split_once('@') {
        Some((prefix, instance))
            if prefix.is_empty() || instance.is_empty() || instance.contains('@') =>
        {
            Err(format!(
                "\"{t}\": expected a service or a template instance such as postgresql@15-main"
            ))
        }
        None if stem.is_empty() => Err(format!("\"{t}\": empty unit name")),
        _ => Ok(Some(full)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_agent_addr("127.0.0.1:5480").unwrap().to_string(),
            "127.0.0.1:5480"
        );
        assert_eq!(parse_agent_addr(" db1:1 ").unwrap().host, "db1");
        assert_eq!(parse_agent_addr("[::1]:7").unwrap().to_string(), "[::1]:7");
        for bad in ["", "host", ":5", "h:0", "h:70000", "h:x", "a b:5", "::1:5"] {
            assert!(parse_agent_addr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn metrics_address() {
        assert_eq!(parse_metrics_addr("").unwrap(), None);
        assert_eq!(parse_metrics_addr("  ").unwrap(), None);
        assert_eq!(
            parse_metrics_addr("127.0.0.1:9187").unwrap().unwrap().port,
            9187
        );
        assert!(parse_metrics_addr("9187").unwrap_err().contains("no port"));
        assert!(parse_metrics_addr("h:0").is_err());
    }

    #[test]
    fn peers() {
        assert_eq!(parse_peers("").unwrap(), vec![]);
        assert_eq!(parse_peers("a:1, b:2").unwrap().len(), 2);
        assert!(parse_peers("a:1,,b:2").unwrap_err().contains("entry 2"));
        assert!(parse_peers("a:1,a:1").unwrap_err().contains("twice"));
        assert!(parse_peers("a:1,b").unwrap_err().contains("entry 2"));
    }

    #[test]
    fn names() {
        assert!(validate_node_name("node1").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("1node").is_err());
        assert!(validate_node_name("no-de").is_err());
        assert!(validate_zone("eu-west-1a").is_ok());
        assert!(validate_zone("a b").is_err());
    }

    #[test]
    fn systemd_units() {
        assert_eq!(parse_systemd_unit("").unwrap(), None);
        assert_eq!(
            parse_systemd_unit("postgresql@15-main").unwrap().as_deref(),
            Some("postgresql@15-main.service")
        );
        assert_eq!(
            parse_systemd_unit(" postgresql@15-main.service ")
                .unwrap()
                .as_deref(),
            Some("postgresql@15-main.service")
        );
        assert_eq!(
            parse_systemd_unit("pg").unwrap().as_deref(),
            Some("pg.service")
        );
        for bad in [
            "postgresql@",
            "@15-main",
            "a@b@c",
            "postgresql@15 main",
            "pg.socket",
            "x/y",
            "p;rm",
            "pg\\x2d",
            ".service",
        ] {
            assert!(parse_systemd_unit(bad).is_err(), "{bad} accepted");
        }
    }
}
