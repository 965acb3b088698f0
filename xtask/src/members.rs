//! The accuracy recipe's MEMBERS argument: `arch:seed` or `arch:seed:epochs`, comma separated.

use std::collections::HashSet;
use std::str::FromStr;

use models::Arch;

/// One ensemble member: an architecture, its seed, and its own epoch count if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub arch: Arch,
    pub seed: u64,
    pub epochs: Option<u32>,
}

impl Member {
    /// Its checkpoint folder, ONNX file and log are named after it.
    pub fn name(&self) -> String {
        format!("{}_s{}", self.arch, self.seed)
    }
}

impl FromStr for Member {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("member '{s}' is not arch:seed or arch:seed:epochs");
        let parts: Vec<&str> = s.split(':').collect();
        let (arch, seed, epochs) = match parts[..] {
            [arch, seed] => (arch, seed, None),
            [arch, seed, epochs] => (arch, seed, Some(epochs)),
            _ => return Err(bad()),
        };
        // Digits only: u64's own parser would also take "+1".
        let number = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if arch.is_empty() || !number(seed) || !epochs.is_none_or(number) {
            return Err(bad());
        }
        let arch = arch.parse::<Arch>().map_err(|_| {
            format!("member '{s}': unknown architecture '{arch}' (one of {})", Arch::names().join(", "))
        })?;
        let seed = seed.parse().map_err(|_| bad())?;
        let epochs = match epochs.map(str::parse::<u32>) {
            None => None,
            Some(Ok(e)) if e > 0 => Some(e),
            Some(_) => return Err(bad()),
        };
        Ok(Member { arch, seed, epochs })
    }
}

/// The whole comma list; two members of one name would share a checkpoint folder, so a
/// repeat is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members(pub Vec<Member>);

impl FromStr for Members {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let list = s.split(',').map(str::parse).collect::<Result<Vec<Member>, _>>()?;
        let mut names = HashSet::new();
        if let Some(twice) = list.iter().find(|m| !names.insert(m.name())) {
            return Err(format!("member {} is given twice", twice.name()));
        }
        Ok(Members(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_forms_parse() {
        let m: Members = "cnn_digits:1,resnet_digits:1:6,m5:12".parse().unwrap();
        assert_eq!(
            m.0,
            [
                Member { arch: Arch::CnnDigits, seed: 1, epochs: None },
                Member { arch: Arch::ResnetDigits, seed: 1, epochs: Some(6) },
                Member { arch: Arch::M5, seed: 12, epochs: None },
            ]
        );
        assert_eq!(m.0[1].name(), "resnet_digits_s1");
    }

    #[test]
    fn bad_forms_are_refused_with_the_member_named() {
        for bad in [
            "",
            "cnn_digits",
            ":1",
            "cnn_digits:",
            "cnn_digits:x",
            "cnn_digits:+1",
            "cnn_digits:-1",
            "cnn_digits:1:",
            "cnn_digits:1:0",
            "cnn_digits:1:2:3",
            "cnn_digits:1:1.5",
        ] {
            let err = bad.parse::<Member>().expect_err(bad);
            assert_eq!(err, format!("member '{bad}' is not arch:seed or arch:seed:epochs"));
        }
        let err = "cnn_digit:1".parse::<Member>().unwrap_err();
        assert!(err.contains("unknown architecture 'cnn_digit'") && err.contains("cnn_digits"), "{err}");
    }

    #[test]
    fn a_list_refuses_empty_items_and_repeats() {
        assert!("cnn_digits:1,,cnn_digits:2".parse::<Members>().is_err());
        assert!("cnn_digits:1,".parse::<Members>().is_err());
        let err = "cnn_digits:1,cnn_digits:1:5".parse::<Members>().unwrap_err();
        assert_eq!(err, "member cnn_digits_s1 is given twice");
    }
}
