//! Calendar dates from Unix days (proleptic Gregorian, UTC), for the few places that write a
//! date without a time-zone library: ZIP entry times and API key timestamps.

/// (year, month 1–12, day 1–31) of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn date_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a date (Howard Hinnant's `days_from_civil`; the inverse of
/// [`date_from_days`]).
pub fn days_from_date(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::date_from_days(0), (1970, 1, 1));
        assert_eq!(super::date_from_days(11_016), (2000, 2, 29));
        assert_eq!(super::date_from_days(20_789), (2026, 12, 2));
        assert_eq!(super::date_from_days(-1), (1969, 12, 31));
        for days in [-1, 0, 11_016, 20_789, 59, 60] {
            let (y, m, d) = super::date_from_days(days);
            assert_eq!(super::days_from_date(y, m, d), days);
        }
    }
}
