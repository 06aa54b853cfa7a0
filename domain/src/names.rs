//! Fieldless enums whose variants travel as names (`"cancellation_requested"`), declared with
//! each name beside its variant, once. The read model stores the names, the query API parses
//! and documents them, and events carry some of them: all take them from here.

/// Declares the enum, and gives it `ALL`, `NAMES`, `as_str`, `parse`, and serde through the
/// names. Deserialising an unknown name fails as serde's derive would (`unknown variant …,
/// expected one of …`), so error messages stay as they were.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $type:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $name:literal,)*
        }
    ) => {
        $(#[$meta])*
        $vis enum $type {
            $($(#[$variant_meta])* $variant,)*
        }

        impl $type {
            /// Every variant, in declaration order.
            pub const ALL: &[$type] = &[$($type::$variant,)*];
            /// Every variant's name, in declaration order.
            pub const NAMES: &[&str] = &[$($name,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }

        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&name).ok_or_else(|| {
                    <D::Error as serde::de::Error>::unknown_variant(&name, Self::NAMES)
                })
            }
        }
    };
}

pub(crate) use named_enum;
