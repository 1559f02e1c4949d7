//! The time zone assumed for syslog timestamps written without one: RFC 3164's
//! `Mmm dd hh:mm:ss` never carries a zone, and some senders write RFC 3339 times without their
//! offset. Devices stamp these in their local time; a fixed offset is wrong for half of the year
//! wherever daylight saving time applies, so a zone may also be named (IANA, e.g.
//! `Europe/Paris`) and the offset then follows the date.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

/// The largest fixed offset accepted, in seconds either side of UTC.
pub const MAX_FIXED_OFFSET_SECS: i32 = 24 * 3600;

/// Where an unzoned local time is placed on the UTC time line.
#[derive(Clone)]
pub enum LocalZone {
    /// A fixed offset east of UTC, in seconds.
    Fixed(i32),
    /// An IANA zone from the time zone database built into the binary.
    Named(NamedZone),
}

#[derive(Clone)]
pub struct NamedZone {
    name: Arc<str>,
    tz: jiff::tz::TimeZone,
    /// The last local second converted and its UTC second. A sender stamps whole seconds,
    /// so the messages of one second all hit this instead of the zone's rules.
    last_local: Cell<Option<(i64, i64)>>,
    /// The last UTC second whose local offset was asked for (the receive time, to infer a
    /// missing year), and that offset.
    last_offset: Cell<Option<(i64, i32)>>,
}

impl Default for LocalZone {
    fn default() -> Self {
        LocalZone::Fixed(0)
    }
}

impl fmt::Debug for LocalZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalZone({self})")
    }
}

impl fmt::Display for LocalZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalZone::Fixed(0) => f.write_str("UTC"),
            LocalZone::Fixed(secs) => {
                let sign = if *secs < 0 { '-' } else { '+' };
                let abs = secs.unsigned_abs();
                write!(f, "{sign}{:02}:{:02}", abs / 3600, abs / 60 % 60)?;
                if abs % 60 != 0 {
                    write!(f, ":{:02}", abs % 60)?;
                }
                Ok(())
            }
            LocalZone::Named(zone) => f.write_str(&zone.name),
        }
    }
}

impl LocalZone {
    /// `UTC`, an offset (`+02:00`, `-0530`), an IANA zone name (`Europe/Paris`), or `local`:
    /// this host's zone when the config is read (`TZ`, else `/etc/localtime`), which is what
    /// rsyslog and syslog-ng assume for RFC 3164 times.
    pub fn parse(text: &str) -> Result<LocalZone, String> {
        if matches!(text, "UTC" | "Z" | "GMT") {
            return Ok(LocalZone::Fixed(0));
        }
        if text == "local" {
            let tz = jiff::tz::TimeZone::try_system().map_err(|e| {
                format!("cannot read this host's time zone (TZ, /etc/localtime): {e}")
            })?;
            let name = format!("local ({})", tz.iana_name().unwrap_or("unnamed"));
            return Ok(LocalZone::Named(NamedZone::new(name, tz)));
        }
        if let Some(rest) = text.strip_prefix(['+', '-']) {
            let not_an_offset =
                || format!("`{text}` is not an offset: write it as ±hh:mm (e.g. +02:00, -05:30)");
            let (h1, h2, m1, m2) = match *rest.as_bytes() {
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => (h1, h2, m1, m2),
                _ => return Err(not_an_offset()),
            };
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i32::from(a - b'0') * 10 + i32::from(b - b'0'))
            };
            let (hours, minutes) = match (two(h1, h2), two(m1, m2)) {
                (Some(h), Some(m)) if h <= 23 && m <= 59 => (h, m),
                _ => return Err(not_an_offset()),
            };
            let secs = hours * 3600 + minutes * 60;
            return Ok(LocalZone::Fixed(if text.starts_with('-') {
                -secs
            } else {
                secs
            }));
        }
        match jiff::tz::TimeZone::get(text) {
            Ok(tz) => Ok(LocalZone::Named(NamedZone::new(text.to_owned(), tz))),
            Err(_) => Err(format!(
                "unknown time zone `{text}`: use an IANA name such as `Europe/Paris` or \
                 `America/New_York`, `UTC`, `local` (this host's zone), or an offset such as \
                 `+02:00`"
            )),
        }
    }

    /// A zone a record names (a CEF date's own zone, `dtz`): the spellings of
    /// [`LocalZone::parse`] except `local`, which means this host's zone and is the operator's
    /// choice, never a sender's.
    pub fn parse_written(text: &str) -> Option<LocalZone> {
        if text == "local" {
            return None;
        }
        LocalZone::parse(text).ok()
    }

    /// The UTC second of a local wall-clock time, given as seconds since the epoch as if that
    /// wall clock were UTC. A time that does not exist locally (skipped when clocks go
    /// forward) is moved forward by the gap; a time that occurs twice (when clocks go back)
    /// is taken as the first: the choice of RFC 5545 and of most libraries (jiff's
    /// "compatible" rule). `None` only outside the supported years.
    #[inline]
    pub fn utc_from_local(&self, local_secs: i64) -> Option<i64> {
        match self {
            LocalZone::Fixed(offset) => local_secs.checked_sub(i64::from(*offset)),
            LocalZone::Named(zone) => zone.utc_from_local(local_secs),
        }
    }

    /// Seconds east of UTC that this zone's clocks show at the UTC second `utc_secs`.
    #[inline]
    pub fn offset_at(&self, utc_secs: i64) -> i32 {
        match self {
            LocalZone::Fixed(offset) => *offset,
            LocalZone::Named(zone) => zone.offset_at(utc_secs),
        }
    }
}

impl NamedZone {
    fn new(name: String, tz: jiff::tz::TimeZone) -> NamedZone {
        NamedZone {
            name: name.into(),
            tz,
            last_local: Cell::new(None),
            last_offset: Cell::new(None),
        }
    }

    fn utc_from_local(&self, local_secs: i64) -> Option<i64> {
        if let Some((local, utc)) = self.last_local.get()
            && local == local_secs
        {
            return Some(utc);
        }
        let civil = jiff::Timestamp::from_second(local_secs)
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .datetime();
        let utc = self
            .tz
            .to_ambiguous_timestamp(civil)
            .compatible()
            .ok()?
            .as_second();
        self.last_local.set(Some((local_secs, utc)));
        Some(utc)
    }

    fn offset_at(&self, utc_secs: i64) -> i32 {
        if let Some((utc, offset)) = self.last_offset.get()
            && utc == utc_secs
        {
            return offset;
        }
        let offset = jiff::Timestamp::from_second(utc_secs)
            .map(|t| self.tz.to_offset(t).seconds())
            .unwrap_or(0);
        self.last_offset.set(Some((utc_secs, offset)));
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC civil time, via chrono (an independent calendar).
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
            .and_utc()
            .timestamp()
    }

    #[test]
    fn fixed_offsets_and_their_spellings() {
        for (text, secs) in [
            ("UTC", 0),
            ("Z", 0),
            ("GMT", 0),
            ("+02:00", 7200),
            ("+0200", 7200),
            ("-05:30", -19_800),
            ("-0000", 0),
            ("+23:59", 86_340),
        ] {
            match LocalZone::parse(text) {
                Ok(LocalZone::Fixed(s)) => assert_eq!(s, secs, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        for bad in [
            "+2", "+02", "+02:0", "+24:00", "+02:60", "+0:200", "+02::00", "+ab:cd", "-",
        ] {
            let err = LocalZone::parse(bad).unwrap_err();
            assert!(err.contains("±hh:mm"), "{bad}: {err}");
        }
        let zone = LocalZone::parse("-05:30").unwrap();
        assert_eq!(zone.to_string(), "-05:30");
        assert_eq!(zone.utc_from_local(0), Some(19_800));
        assert_eq!(zone.offset_at(123), -19_800);
        assert_eq!(LocalZone::Fixed(0).to_string(), "UTC");
        assert_eq!(LocalZone::Fixed(3723).to_string(), "+01:02:03");
    }

    #[test]
    fn local_is_a_named_zone_that_says_which() {
        // Whatever this host's zone is, it resolves and names itself.
        let zone = LocalZone::parse("local").unwrap();
        assert!(zone.to_string().starts_with("local ("), "{zone}");
        assert!(matches!(zone, LocalZone::Named(_)));
    }

    #[test]
    fn unknown_names_say_what_is_accepted() {
        let err = LocalZone::parse("Europe/Pariss").unwrap_err();
        assert!(
            err.contains("`Europe/Pariss`") && err.contains("IANA"),
            "{err}"
        );
        assert!(LocalZone::parse("").is_err());
    }

    #[test]
    fn a_named_zone_follows_daylight_saving_time() {
        let paris = LocalZone::parse("Europe/Paris").unwrap();
        assert_eq!(paris.to_string(), "Europe/Paris");
        // Winter: UTC+1; summer: UTC+2.
        let winter = utc(2024, 1, 15, 12, 0, 0);
        assert_eq!(paris.utc_from_local(winter), Some(winter - 3600));
        let summer = utc(2024, 7, 15, 12, 0, 0);
        assert_eq!(paris.utc_from_local(summer), Some(summer - 7200));
        assert_eq!(paris.offset_at(winter), 3600);
        assert_eq!(paris.offset_at(summer), 7200);
        // The southern hemisphere has its summer time in January.
        let sydney = LocalZone::parse("Australia/Sydney").unwrap();
        assert_eq!(sydney.utc_from_local(winter), Some(winter - 11 * 3600));
        assert_eq!(sydney.utc_from_local(summer), Some(summer - 10 * 3600));
    }

    #[test]
    fn skipped_and_repeated_local_times() {
        let paris = LocalZone::parse("Europe/Paris").unwrap();
        for (local, want, why) in [
            (
                utc(2024, 3, 31, 2, 30, 0),
                utc(2024, 3, 31, 1, 30, 0),
                "02:00 became 03:00: 02:30 never happened and reads as 03:30 summer time",
            ),
            (
                utc(2024, 10, 27, 2, 30, 0),
                utc(2024, 10, 27, 0, 30, 0),
                "03:00 went back to 02:00: of the two 02:30s, the first (UTC+2) is taken",
            ),
            (
                utc(2024, 3, 31, 1, 59, 59),
                utc(2024, 3, 31, 0, 59, 59),
                "the last second of winter time",
            ),
            (
                utc(2024, 10, 27, 3, 0, 0),
                utc(2024, 10, 27, 2, 0, 0),
                "the first second after the repeated hour",
            ),
        ] {
            assert_eq!(paris.utc_from_local(local), Some(want), "{why}");
        }
    }

    #[test]
    fn the_cache_never_answers_for_another_second() {
        let paris = LocalZone::parse("Europe/Paris").unwrap();
        let t = utc(2024, 10, 27, 1, 59, 59);
        for _ in 0..3 {
            assert_eq!(paris.utc_from_local(t), Some(t - 7200));
            assert_eq!(paris.utc_from_local(t + 3600 + 1), Some(t + 1));
        }
        let before = utc(2024, 10, 27, 0, 59, 59);
        for _ in 0..3 {
            assert_eq!(paris.offset_at(before), 7200);
            assert_eq!(paris.offset_at(before + 1), 3600);
        }
        // A clone keeps working on its own.
        let copy = paris.clone();
        assert_eq!(copy.utc_from_local(t), Some(t - 7200));
    }

    proptest::proptest! {
        /// Any local second in 1900–2100, asked in any order: the answer is a time whose local
        /// clock reads that second, or, in a skipped hour, the second the gap moves it to; and
        /// the cache answers exactly what a fresh zone computes.
        #[test]
        fn conversions_read_back_and_the_cache_agrees(
            zone in proptest::sample::select(vec![
                "Europe/Paris", "America/New_York", "Australia/Sydney", "America/St_Johns",
                "Asia/Kolkata", "Pacific/Apia",
            ]),
            locals in proptest::collection::vec(-2_208_988_800i64..4_102_444_800, 1..40),
        ) {
            let cached = LocalZone::parse(zone).unwrap();
            for &local in &locals {
                let fresh = LocalZone::parse(zone).unwrap();
                let utc = cached.utc_from_local(local).unwrap();
                proptest::prop_assert_eq!(Some(utc), fresh.utc_from_local(local));
                let shown = utc + i64::from(cached.offset_at(utc));
                proptest::prop_assert_eq!(cached.offset_at(utc), fresh.offset_at(utc));
                // Read back, or moved forward by at most the widest gap (Apia skipped a day).
                proptest::prop_assert!(
                    shown == local || (shown > local && shown - local <= 24 * 3600),
                    "{zone}: local {local} -> utc {utc} reads {shown}"
                );
                // Asked again right away, the cache gives the same.
                proptest::prop_assert_eq!(cached.utc_from_local(local), Some(utc));
            }
        }
    }

    #[test]
    fn out_of_range_times_are_none_not_a_panic() {
        let paris = LocalZone::parse("Europe/Paris").unwrap();
        assert_eq!(paris.utc_from_local(i64::MAX), None);
        assert_eq!(paris.utc_from_local(i64::MIN), None);
        assert_eq!(paris.offset_at(i64::MAX), 0);
        assert_eq!(LocalZone::Fixed(3600).utc_from_local(i64::MIN), None);
    }
}
