//! Numbers and times for people.

use jiff::Timestamp;

/// `3.2 GiB`, `512 MiB`, `12 KiB`, `100 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// Millicores as cores: `0.25`, `2`, `1.5`.
pub fn cpu(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) {
        format!("{}", millicores / 1000)
    } else {
        let cores = millicores as f64 / 1000.0;
        let text = format!("{cores:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A fraction in [0, 1] as `42%`.
pub fn percent(fraction: f64) -> String {
    format!("{:.0}%", (fraction * 100.0).clamp(0.0, 100.0))
}

/// How long before `now` `then` was: `4s ago`, `3m ago`, `2h ago`, `5d ago` (`in 3s` for a
/// time ahead, from a clock a little ahead of this one).
pub fn ago(then: Timestamp, now: Timestamp) -> String {
    let seconds = now.as_second() - then.as_second();
    let (n, ahead) = if seconds < 0 { (-seconds, true) } else { (seconds, false) };
    let text = match n {
        0..60 => format!("{n}s"),
        60..3600 => format!("{}m", n / 60),
        3600..86_400 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if ahead { format!("in {text}") } else { format!("{text} ago") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(512 * 1024 * 1024), "512 MiB");
        assert_eq!(cpu(250), "0.25");
        assert_eq!(cpu(2000), "2");
        assert_eq!(percent(0.424), "42%");
    }

    #[test]
    fn times_are_relative_to_now() {
        let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(ago(at("2026-12-04T11:59:56Z"), now), "4s ago");
        assert_eq!(ago(at("2026-12-04T09:00:00Z"), now), "3h ago");
        assert_eq!(ago(at("2026-12-04T12:00:03Z"), now), "in 3s");
    }
}
