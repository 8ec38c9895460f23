//! Domain value types shared by every module: roles, vehicle types, statuses, phone numbers,
//! coordinates. Each parses its input once, at the edge, and cannot hold an invalid value
//! afterwards ("parse, don't validate"). Serde goes through the same parsers, so a bad value
//! in a JSON body becomes a 422 naming its field.

pub mod money;
pub mod offers;
pub mod orders;
pub mod text;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares a closed set of lowercase string values with `as_str`, `FromStr`, `Display`
/// and serde, so the database, JSON and logs all spell a variant the same way.
macro_rules! string_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::UnknownVariant;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::domain::UnknownVariant { kind: stringify!($name), value: text.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use string_enum;

/// A string that names no variant of a [`string_enum!`] type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

string_enum! {
    /// What a user is allowed to do. Customers and pilots sign themselves up; dispatchers
    /// and admins are created by an operator with `dispatchd admin create-user`.
    pub enum Role {
        Customer => "customer",
        Pilot => "pilot",
        Dispatcher => "dispatcher",
        Admin => "admin",
    }
}

impl Role {
    /// Roles that `POST /auth/register` accepts.
    pub fn can_self_register(self) -> bool {
        matches!(self, Role::Customer | Role::Pilot)
    }

    /// Dispatchers and admins: the operator's own staff.
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Dispatcher | Role::Admin)
    }
}

string_enum! {
    /// The vehicle a pilot drives; orders ask for one.
    pub enum VehicleType {
        Bike => "bike",
        Auto => "auto",
        MiniTruck => "mini_truck",
        EvCycle => "ev_cycle",
    }
}

string_enum! {
    /// A pilot's availability as the dispatcher sees it.
    pub enum PilotStatus {
        Offline => "offline",
        Available => "available",
        OnOffer => "on_offer",
        Busy => "busy",
        Break => "break",
    }
}

string_enum! {
    /// Whether a pilot may take work. A new pilot waits for an admin, who checks its papers
    /// and records its vehicle's plate; an admin can suspend it again.
    pub enum PilotApproval {
        Pending => "pending",
        Approved => "approved",
        Suspended => "suspended",
    }
}

/// Why a value was refused; becomes the message of a 422 for the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A phone number in E.164 form: `+`, a country code not starting with 0, 8 to 15 digits in
/// all. Spaces, dashes and parentheses people type are removed first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let compact: String = input.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')')).collect();
        let digits = compact.strip_prefix('+').ok_or_else(|| {
            Invalid("must be in international E.164 form, starting with + and the country code".into())
        })?;
        let valid =
            (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if !valid {
            return Err(Invalid("must be + followed by 8 to 15 digits (E.164), e.g. +919876543210".into()));
        }
        Ok(Self(compact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Phone {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Phone::parse(&value)
    }
}

impl From<Phone> for String {
    fn from(phone: Phone) -> String {
        phone.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person's display name: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        short_text(input, 100).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PersonName {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        PersonName::parse(&value)
    }
}

impl From<PersonName> for String {
    fn from(name: PersonName) -> String {
        name.0
    }
}

/// `input` trimmed, when it is 1 to `max` characters without control characters.
fn short_text(input: &str, max: usize) -> Result<String, Invalid> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(Invalid("must not be empty".into()));
    }
    if trimmed.chars().count() > max {
        return Err(Invalid(format!("must be at most {max} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Invalid("must not contain control characters".into()));
    }
    Ok(trimmed.to_owned())
}

/// A vehicle's registration plate as painted ("KA 01 AB 1234", "ka01ab1234"), kept in one
/// spelling: upper case, without spaces, dots or hyphens; 4 to 12 letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VehiclePlate(String);

impl VehiclePlate {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let plate: String =
            input.chars().filter(|c| !matches!(c, ' ' | '-' | '.')).map(|c| c.to_ascii_uppercase()).collect();
        if !(4..=12).contains(&plate.len()) || !plate.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Invalid("must be a registration plate: 4 to 12 letters and digits".into()));
        }
        Ok(Self(plate))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VehiclePlate {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        VehiclePlate::parse(&value)
    }
}

impl From<VehiclePlate> for String {
    fn from(plate: VehiclePlate) -> String {
        plate.0
    }
}

/// A vehicle's make and model as people say it ("Honda Activa 6G"): 1 to 60 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VehicleModel(String);

impl VehicleModel {
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        short_text(input, 60).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VehicleModel {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        VehicleModel::parse(&value)
    }
}

impl From<VehicleModel> for String {
    fn from(model: VehicleModel) -> String {
        model.0
    }
}

/// A point on Earth in WGS84 degrees. Never NaN, never out of range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawLatLng")]
pub struct LatLng {
    lat: f64,
    lng: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatLng {
    lat: f64,
    lng: f64,
}

impl LatLng {
    pub fn new(lat: f64, lng: f64) -> Result<Self, Invalid> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(Invalid(format!("lat must be between -90 and 90, got {lat}")));
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(Invalid(format!("lng must be between -180 and 180, got {lng}")));
        }
        Ok(Self { lat, lng })
    }

    pub fn lat(self) -> f64 {
        self.lat
    }

    pub fn lng(self) -> f64 {
        self.lng
    }
}

impl TryFrom<RawLatLng> for LatLng {
    type Error = Invalid;
    fn try_from(raw: RawLatLng) -> Result<Self, Invalid> {
        LatLng::new(raw.lat, raw.lng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_normalised_e164() {
        assert_eq!(Phone::parse("+91 98765-43210").unwrap().as_str(), "+919876543210");
        for bad in ["9876543210", "+0123456789", "+12", "+1234567890123456", "+91abc4567890", ""] {
            assert!(Phone::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(PersonName::parse("  Asha ").unwrap().as_str(), "Asha");
        assert!(PersonName::parse("   ").is_err());
        assert!(PersonName::parse(&"x".repeat(101)).is_err());
        assert!(PersonName::parse("a\u{0}b").is_err());
    }

    #[test]
    fn plates_have_one_spelling() {
        assert_eq!(VehiclePlate::parse(" ka-01 ab.1234 ").unwrap().as_str(), "KA01AB1234");
        for bad in ["", "KA1", "KA01AB12345678", "KA01\u{0}1234", "KA01 ÄB 12"] {
            assert!(VehiclePlate::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(VehicleModel::parse(" Honda Activa 6G ").unwrap().as_str(), "Honda Activa 6G");
        assert!(VehicleModel::parse(&"x".repeat(61)).is_err());
    }

    #[test]
    fn coordinates_reject_nan_and_out_of_range() {
        assert!(LatLng::new(12.97, 77.59).is_ok());
        assert!(LatLng::new(90.0, 180.0).is_ok());
        for (lat, lng) in [(f64::NAN, 0.0), (91.0, 0.0), (0.0, -180.5), (0.0, f64::INFINITY)] {
            assert!(LatLng::new(lat, lng).is_err(), "({lat}, {lng}) accepted");
        }
        let err = serde_json::from_str::<LatLng>(r#"{"lat": 12.9, "lng": 200}"#).unwrap_err();
        assert!(err.to_string().contains("lng must be between"), "{err}");
    }

    #[test]
    fn enums_round_trip_through_text() {
        for vehicle in VehicleType::ALL {
            assert_eq!(vehicle.as_str().parse::<VehicleType>().unwrap(), *vehicle);
            let json = serde_json::to_string(vehicle).unwrap();
            assert_eq!(json, format!("\"{}\"", vehicle.as_str()));
        }
        assert!("car".parse::<VehicleType>().is_err());
        assert!(Role::Customer.can_self_register() && !Role::Admin.can_self_register());
    }
}
