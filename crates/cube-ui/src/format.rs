//! Numbers for people (times are `when`, shown as ages by the script).

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
}
