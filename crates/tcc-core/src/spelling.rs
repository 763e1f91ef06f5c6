//! One spelling per variant of every settings enum, shared by the schedule
//! parser and printer, the plan renderer, plan and priors files (serde) and
//! the CLI's flags, so a new variant is a one-place edit.

use std::fmt;

/// Declares a settings enum whose variants are written once, each with its
/// spelling in schedules and files: `Variant = "spelling"`. It derives
/// `ALL` (documentation order), `NAMES`, `as_str`, `from_name`, `Display`,
/// `FromStr` and serde's `Serialize` / `Deserialize` from that one list.
macro_rules! spelled_enum {
    (
        $(#[$meta:meta])*
        pub enum $ty:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $name:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        pub enum $ty {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $ty {
            /// Every variant with its spelling, in documentation order.
            pub const ALL: &'static [(&'static str, $ty)] = &[$(($name, $ty::$variant)),+];

            /// Every spelling, in documentation order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The spelling in schedules and files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The variant spelled `name`.
            pub fn from_name(name: &str) -> Option<$ty> {
                Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::UnknownName;

            fn from_str(s: &str) -> Result<$ty, $crate::UnknownName> {
                $ty::from_name(s).ok_or_else(|| $crate::UnknownName {
                    name: s.to_string(),
                    expected: Self::NAMES,
                })
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let name = <String as ::serde::Deserialize>::deserialize(d)?;
                $ty::from_name(&name)
                    .ok_or_else(|| ::serde::de::Error::unknown_variant(&name, Self::NAMES))
            }
        }
    };
}

/// A spelling that names no variant (`str::parse` of a settings enum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    pub name: String,
    /// The spellings there are.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown value `{}`, expected one of: {}",
            self.name,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}
