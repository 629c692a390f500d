//! The cluster token: every agent RPC carries `authorization: Bearer <token>`; agents never trust a peer
//! without it.

use std::path::Path;

pub const METADATA_KEY: &str = "authorization";

/// Read the token file: one line, surrounding whitespace ignored. Refuses empty files and files readable
/// by group or others (the secret would leak to other local users).
pub fn read_token_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "{} holds a token shorter than 16 characters",
            path.display()
        ));
    }
    Ok(token)
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Check a presented `authorization` value against the expected token, in time independent of where
/// they differ.
pub fn check(presented: Option<&str>, expected: Option<&str>) -> Result<(), &'static str> {
    let expected = expected.ok_or("this agent has no token configured (ha.auth_token_file)")?;
    let presented = presented.ok_or("missing token")?;
    let presented = presented
        .strip_prefix("Bearer ")
        .ok_or("malformed authorization")?;
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    if diff == 0 {
        Ok(())
    } else {
        Err("wrong token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check() {
        let t = Some("0123456789abcdef");
        assert!(check(Some("Bearer 0123456789abcdef"), t).is_ok());
        assert_eq!(check(None, t), Err("missing token"));
        assert_eq!(
            check(Some("0123456789abcdef"), t),
            Err("malformed authorization")
        );
        assert_eq!(
            check(Some("Bearer 0123456789abcdeX"), t),
            Err("wrong token")
        );
        assert_eq!(
            check(Some("Bearer 0123456789abcdef0"), t),
            Err("wrong token")
        );
        assert!(check(Some("Bearer x"), None).is_err());
    }
}
