//! uid and gid names, read from the host's `/etc/passwd` and `/etc/group`
//! directly (a static binary has no NSS, and the files are the evidence).

use std::collections::HashMap;
use std::path::Path;

use super::fsread;

/// uid -> user name and gid -> group name.
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Accounts {
    /// Loads `<etc>/passwd` and `<etc>/group`; missing files give empty
    /// tables (names are then `None`).
    #[must_use]
    pub fn load(etc: &Path) -> Self {
        let table = |file: &str| {
            fsread::read_small(&etc.join(file))
                .map(|b| parse_colon_table(&b))
                .unwrap_or_default()
        };
        Self {
            users: table("passwd"),
            groups: table("group"),
        }
    }

    /// The user name of `uid`.
    #[must_use]
    pub fn user(&self, uid: u32) -> Option<String> {
        self.users.get(&uid).cloned()
    }

    /// The group name of `gid`.
    #[must_use]
    pub fn group(&self, gid: u32) -> Option<String> {
        self.groups.get(&gid).cloned()
    }
}

/// Parses `name:x:id:...` lines into id -> name (first name wins).
fn parse_colon_table(bytes: &[u8]) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Some(id) = std::str::from_utf8(id).ok().and_then(|s| s.parse().ok()) {
            out.entry(id)
                .or_insert_with(|| String::from_utf8_lossy(name).into_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd() {
        let t = parse_colon_table(
            b"root:x:0:0:root:/root:/bin/bash\nbad\nnobody:x:65534:65534::/:/x\ndup:x:0:0\n",
        );
        assert_eq!(t.get(&0).map(String::as_str), Some("root"));
        assert_eq!(t.get(&65534).map(String::as_str), Some("nobody"));
        assert_eq!(t.len(), 2);
    }
}
