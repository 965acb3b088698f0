//! Positional arguments as the scripts took them: an empty one ("") means its default, as
//! `${2:-default}` did.

use std::fmt::Display;
use std::str::FromStr;

use models::Arch;

/// `T`, or nothing for "" (clap fills in "" when the argument is absent: `default_value = ""`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrDefault<T>(pub Option<T>);

impl<T: FromStr> FromStr for OrDefault<T>
where
    T::Err: Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(OrDefault(None));
        }
        s.parse().map(|t| OrDefault(Some(t))).map_err(|e: T::Err| e.to_string())
    }
}

/// A comma list of architectures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archs(pub Vec<Arch>);

impl FromStr for Archs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let archs = s.split(',').map(str::parse).collect::<Result<Vec<Arch>, _>>();
        archs.map(Archs).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn empty_means_the_default_and_anything_else_must_parse() {
        assert_eq!("".parse::<OrDefault<NonZeroU32>>().unwrap(), OrDefault(None));
        assert_eq!("7".parse::<OrDefault<NonZeroU32>>().unwrap().0.map(NonZeroU32::get), Some(7));
        assert!("0".parse::<OrDefault<NonZeroU32>>().is_err());
        assert!("x".parse::<OrDefault<NonZeroU32>>().is_err());
        assert_eq!("m5,cnn_digits".parse::<Archs>().unwrap().0, [Arch::M5, Arch::CnnDigits]);
        assert!("m5,,cnn_digits".parse::<Archs>().is_err());
        assert!("m6".parse::<Archs>().unwrap_err().contains("cnn_digits"));
    }
}
