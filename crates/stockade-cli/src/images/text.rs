//! How image facts are written for people: sizes, ages, the table of
//! `stockade images`. Pure functions of their inputs (the clock is an
//! argument), so the tests pin them down.

use stockade_image::ImageSummary;

/// Bytes in binary units, three significant digits: `512 B`, `1.5 KiB`,
/// `12.3 MiB`, `160 MiB`, `1.02 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {}", UNITS[unit])
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:00:00Z`,
/// with optional fractional seconds and a `±hh:mm` offset), as image
/// configurations write `created`. `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (hh, mm, ss) = (
        num(rest.get(0..2)?)?,
        num(rest.get(3..5)?)?,
        num(rest.get(6..8)?)?,
    );
    if rest.get(2..3)? != ":" || rest.get(5..6)? != ":" {
        return None;
    }
    let mut tail = &rest[8..];
    if let Some(frac) = tail.strip_prefix('.') {
        let end = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        tail = &frac[end..];
    }
    let offset = match tail {
        "Z" | "z" => 0,
        _ => {
            let sign = match tail.get(0..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            if tail.len() != 6 || tail.get(3..4)? != ":" {
                return None;
            }
            sign * (num(tail.get(1..3)?)? * 3600 + num(tail.get(4..6)?)? * 60)
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss - offset)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// well-known algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How long ago `then` was, as `docker images` says it: `3 days ago`.
pub fn ago(then: i64, now: i64) -> String {
    let s = now - then;
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit} ago")
        } else {
            format!("{n} {unit}s ago")
        }
    };
    const MIN: i64 = 60;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    match s {
        i64::MIN..=-1 => "in the future".to_string(),
        0 => "just now".to_string(),
        1..60 => plural(s, "second"),
        60..120 => "About a minute ago".to_string(),
        120..3600 => plural(s / MIN, "minute"),
        3600..7200 => "About an hour ago".to_string(),
        7200..172_800 => plural(s / HOUR, "hour"),
        172_800..1_209_600 => plural(s / DAY, "day"),
        1_209_600..5_184_000 => plural(s / (7 * DAY), "week"),
        5_184_000..63_072_000 => plural(s / (30 * DAY), "month"),
        _ => plural(s / (365 * DAY), "year"),
    }
}

/// The CREATED cell: an age, `N/A` when the image does not say, or the
/// text as written when it is not a time.
pub fn created(created: Option<&str>, now: i64) -> String {
    match created {
        None => "N/A".to_string(),
        Some(c) => match parse_rfc3339(c) {
            Some(t) => ago(t, now),
            None => c.to_string(),
        },
    }
}

/// The table of `stockade images`: REPOSITORY TAG DIGEST SIZE CREATED,
/// columns padded to their widest cell.
pub fn table(list: &[ImageSummary], full_digests: bool, now: i64) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "REPOSITORY".into(),
        "TAG".into(),
        "DIGEST".into(),
        "SIZE".into(),
        "CREATED".into(),
    ]];
    for s in list {
        let digest = if full_digests {
            s.digest.to_string()
        } else {
            s.digest.hex()[..12].to_string()
        };
        rows.push([
            s.repository.clone(),
            s.tag.clone(),
            digest,
            size(s.size),
            created(s.created.as_deref(), now),
        ]);
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units_with_three_digits() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.50 KiB");
        assert_eq!(size(12_900_000), "12.3 MiB");
        assert_eq!(size(160 << 20), "160 MiB");
        assert_eq!(size(5 << 30), "5.00 GiB");
    }

    #[test]
    fn rfc3339_times_parse_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-03-01T00:00:00Z"), Some(1_709_251_200));
        assert_eq!(
            parse_rfc3339("2024-03-01T02:00:00.123456789+02:00"),
            Some(1_709_251_200)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T23:00:00-01:00"),
            Some(1_709_251_200)
        );
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-03-01T00:00:00",
            "2024-03-01T00:00:00+0200",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn ages_read_like_docker_images() {
        let now = 1_000_000_000;
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - 1, now), "1 second ago");
        assert_eq!(ago(now - 90, now), "About a minute ago");
        assert_eq!(ago(now - 3 * 86_400, now), "3 days ago");
        assert_eq!(ago(now - 3 * 7 * 86_400, now), "3 weeks ago");
        assert_eq!(ago(now - 400 * 86_400, now), "13 months ago");
        assert_eq!(ago(now - 3 * 365 * 86_400, now), "3 years ago");
        assert_eq!(ago(now + 5, now), "in the future");
        assert_eq!(created(None, now), "N/A");
        assert_eq!(created(Some("not a time"), now), "not a time");
    }

    #[test]
    fn the_table_aligns_columns_and_shortens_digests() {
        let d: stockade_image::Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let list = vec![
            ImageSummary {
                repository: "docker.io/library/python".into(),
                tag: "3.11".into(),
                digest: d.clone(),
                size: 12_900_000,
                created: Some("2001-09-09T01:46:40Z".into()),
            },
            ImageSummary {
                repository: "localhost/b".into(),
                tag: "<none>".into(),
                digest: d.clone(),
                size: 10,
                created: None,
            },
        ];
        let now = 1_000_000_000 + 3 * 86_400;
        let t = table(&list, false, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("REPOSITORY"), "{t}");
        let col = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(col(lines[0], "TAG"), col(lines[1], "3.11"), "{t}");
        assert_eq!(
            col(lines[0], "DIGEST"),
            col(lines[2], "abababababab"),
            "{t}"
        );
        assert!(
            lines[1].contains("abababababab ") && !lines[1].contains("sha256:"),
            "{t}"
        );
        assert!(lines[1].ends_with("3 days ago"), "{t}");
        assert!(lines[2].ends_with("N/A"), "{t}");
        let full = table(&list, true, now);
        assert!(full.contains(&d.to_string()), "{full}");
    }
}
