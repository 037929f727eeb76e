//! Typed names for everything the storage tool passes to another program or joins onto a
//! path: golden image names, LVM volume group and volume names, iSCSI qualified names.
//!
//! Each one is checked once, when it is parsed; past that point it cannot start with `-`
//! (read as an option), contain `/` or `..` (leave its directory), NUL, whitespace or shell
//! metacharacters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind} {input:?} is not valid: {why}")]
pub struct NameError {
    pub kind: &'static str,
    pub input: String,
    pub why: String,
}

/// The rules every name shares. `extra` lists the punctuation allowed besides ASCII letters
/// and digits.
fn check(kind: &'static str, s: &str, max: usize, extra: &str) -> Result<(), NameError> {
    let err = |why: String| NameError {
        kind,
        input: s.chars().take(80).collect(),
        why,
    };
    if s.is_empty() {
        return Err(err("it is empty".into()));
    }
    if s.len() > max {
        return Err(err(format!("it is longer than {max} characters")));
    }
    if s.starts_with('-') {
        return Err(err("it starts with '-'".into()));
    }
    if s.contains("..") {
        return Err(err("it contains '..'".into()));
    }
    if s == "." {
        return Err(err("it is '.'".into()));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        let shown = if c.is_whitespace() || c.is_control() {
            format!("{:?}", c)
        } else {
            format!("'{c}'")
        };
        return Err(err(format!(
            "it contains {shown}; use letters, digits and {}",
            extra
                .chars()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:literal, $extra:literal $(, $more:expr)?) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                check($kind, s, $max, $extra)?;
                $( ($more)(s).map_err(|why: &str| NameError {
                    kind: $kind,
                    input: s.chars().take(80).collect(),
                    why: why.to_string(),
                })?; )?
                Ok($ty(s.to_string()))
            }
        }

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of a golden image, as the operator calls it: `debian12`, `win11-lab`.
    ImageName,
    "image name",
    64,
    "._-"
);

name_type!(
    /// An LVM volume group name.
    VgName,
    "volume group name",
    127,
    "._-+"
);

name_type!(
    /// An LVM logical volume name (not one of the names LVM reserves for itself).
    LvName,
    "logical volume name",
    127,
    "._-+",
    |s: &str| {
        for reserved in ["snapshot", "pvmove"] {
            if s.starts_with(reserved) {
                return Err("LVM reserves names starting with 'snapshot' and 'pvmove'");
            }
        }
        for reserved in ["_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vorigin"] {
            if s.contains(reserved) {
                return Err("LVM reserves names containing _tdata, _tmeta, _rimage and the like");
            }
        }
        Ok(())
    }
);

name_type!(
    /// An iSCSI qualified name, `iqn.YYYY-MM.reversed.domain[:anything]`, lower case (RFC 3720
    /// section 3.2.6). Used for targets, initiators and as the configured prefix.
    Iqn,
    "iSCSI name",
    223,
    ".-:",
    |s: &str| {
        let rest = s.strip_prefix("iqn.").ok_or("it must start with 'iqn.' (iqn.2024-01.org.example:name)")?;
        let date = rest.get(..7).ok_or("it must start with iqn.YYYY-MM.")?;
        let b = date.as_bytes();
        if !(b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[5..7].iter().all(u8::is_ascii_digit)) {
            return Err("it must start with iqn.YYYY-MM. (the year and month the domain was owned)");
        }
        if rest.as_bytes().get(7) != Some(&b'.') || rest.len() < 9 {
            return Err("a reversed domain name must follow iqn.YYYY-MM. (iqn.2024-01.org.example)");
        }
        if s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err("iSCSI names are lower case");
        }
        if s.ends_with(':') || s.ends_with('.') {
            return Err("it must not end with ':' or '.'");
        }
        Ok(())
    }
);

impl Iqn {
    /// `PREFIX:suffix`; the suffix is built by the tool from already-valid parts.
    pub fn with_suffix(&self, suffix: &str) -> Result<Iqn, NameError> {
        format!("{}:{}", self.0, suffix).parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &[&str] = &[
        "", "-rf", "--force", "a/b", "/etc", "..", "a..b", "a b", "a\tb", "a\0b", "a\nb", "a;b",
        "a|b", "a&b", "$(x)", "`x`", "a>b", "a*b", "a'b", "a\"b", "a\\b", "ä",
    ];

    #[test]
    fn hostile_names_are_refused_everywhere() {
        for s in HOSTILE {
            assert!(s.parse::<ImageName>().is_err(), "image {s:?}");
            assert!(s.parse::<VgName>().is_err(), "vg {s:?}");
            assert!(s.parse::<LvName>().is_err(), "lv {s:?}");
            let iqn = format!("iqn.2024-01.org.example:{s}");
            // Inside an IQN a '-' is harmless: only the start of an argument matters.
            if !s.is_empty() && !s.starts_with('-') {
                assert!(iqn.parse::<Iqn>().is_err(), "iqn {iqn:?}");
            }
        }
    }

    #[test]
    fn good_names() {
        for s in ["debian12", "win11-lab", "a.b_c", "X"] {
            assert_eq!(s.parse::<ImageName>().unwrap().as_str(), s);
        }
        for s in ["vg0", "data+x", "pxc-52-54-00-aa-bb-01"] {
            s.parse::<VgName>().unwrap();
            s.parse::<LvName>().unwrap();
        }
        for s in [
            "iqn.2024-01.org.example",
            "iqn.2024-01.org.example.pxesrv:client-52-54-00-aa-bb-01",
            "iqn.1994-05.com.redhat:abc123",
        ] {
            assert_eq!(s.parse::<Iqn>().unwrap().as_str(), s);
        }
    }

    #[test]
    fn iqn_shape_and_messages() {
        for (s, why) in [
            ("eui.02004567a425678d", "must start with 'iqn.'"),
            ("iqn.24-01.org.x", "iqn.YYYY-MM."),
            ("iqn.2024-01", "reversed domain"),
            ("iqn.2024-01.Org.Example", "lower case"),
            ("iqn.2024-01.org.example:", "must not end"),
        ] {
            let e = s.parse::<Iqn>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
        let p: Iqn = "iqn.2024-01.org.example".parse().unwrap();
        assert_eq!(
            p.with_suffix("disk-aa-bb-cc-dd-ee-ff").unwrap().as_str(),
            "iqn.2024-01.org.example:disk-aa-bb-cc-dd-ee-ff"
        );
        assert!("snapshot1".parse::<LvName>().is_err());
        assert!("-iqn.2024-01.a.b".parse::<Iqn>().is_err());
        assert!("x_tmeta".parse::<LvName>().is_err());
        let e = "a;b".parse::<ImageName>().unwrap_err().to_string();
        assert!(e.contains("contains ';'"), "{e}");
    }
}
