//! The identity types whose canonical form is a string: [`Fingerprint`](crate::Fingerprint),
//! [`UniqueId`](crate::UniqueId), [`MemberId`](crate::MemberId),
//! [`DomainId`](crate::DomainId) and [`MemberRole`](crate::MemberRole).
//!
//! Each is written by its `Display` impl and read back by one parser, and every other
//! conversion goes through that pair: `FromStr` calls the parser, serde writes the `Display`
//! string and parses it on the way in, and `Debug` (where asked for) is `Type(string)`. The
//! impls are the same for every type but for the type and its parser; the orphan rule rules
//! out one blanket impl of these foreign traits, so `string_form!` writes them per type.

/// Implements `FromStr`, `Serialize` and `Deserialize` for `$ty` through `$parse`
/// (`fn(&str) -> Result<$ty, IdError>`) and its `Display` impl; with `debug`, also
/// `Debug` as `$ty(<display>)`.
macro_rules! string_form {
    ($ty:ident, $parse:path) => {
        impl ::std::str::FromStr for $ty {
            type Err = $crate::IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $parse(s)
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                $parse(&s).map_err(::serde::de::Error::custom)
            }
        }
    };
    ($ty:ident, $parse:path, debug) => {
        string_form!($ty, $parse);

        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, concat!(stringify!($ty), "({})"), self)
            }
        }
    };
}
