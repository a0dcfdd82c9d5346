//! A hand-written SVG time series: failed requests per second (bars) against the requests sent per
//! second (a line), with the fault's events as vertical lines. No font or system dependencies.

use std::fmt::Write;

use meshwasm_bench::svg::esc;

/// A "nice" axis maximum covering `max` (at least 1).
fn nice_max(max: f64) -> f64 {
    let max = max.max(1.0);
    let mag = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|v| *v >= max).unwrap_or(10.0 * mag)
}

/// The chart's opening: the `<svg>` element, a white background, the title and five horizontal grid
/// lines labelled from 0 to `ymax` (`y` maps a value to its pixel row). The caller closes `</svg>`.
fn frame(title: &str, (w, h, left, pw): (f64, f64, f64, f64), ymax: f64, y: impl Fn(f64) -> f64) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(o, r#"<text x="{left}" y="18" font-size="13" font-weight="bold">{}</text>"#, esc(title));
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(
            o,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            left + pw,
            left - 4.0,
            yy + 4.0
        );
    }
    o
}

/// `per_second`: (second, sent, failed). `events`: (seconds, label).
pub fn errors_over_time(title: &str, per_second: &[(u64, u64, u64)], events: &[(f64, String)]) -> String {
    let (w, h, left, right, top, bottom) = (860.0, 300.0, 60.0, 20.0, 40.0, 40.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let secs = per_second.len().max(1) as f64;
    let ymax = nice_max(per_second.iter().map(|p| p.1.max(p.2) as f64).fold(0.0, f64::max));
    let x = |s: f64| left + pw * s / secs;
    let y = |v: f64| top + ph - ph * v / ymax;
    let mut o = frame(title, (w, h, left, pw), ymax, y);
    let step = if secs > 120.0 {
        60
    } else if secs > 40.0 {
        10
    } else {
        5
    };
    let mut s = 0;
    while f64::from(s) <= secs {
        let xx = x(f64::from(s));
        let _ =
            writeln!(o, r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{s}</text>"#, top + ph + 14.0);
        s += step;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the load started</text>"#,
        left + pw / 2.0,
        h - 6.0
    );
    let _ = writeln!(
        o,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">requests per second</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Sent per second: a grey step line.
    let mut path = String::new();
    for (i, p) in per_second.iter().enumerate() {
        let (x0, x1, yy) = (x(i as f64), x(i as f64 + 1.0), y(p.1 as f64));
        let _ = write!(path, "{}{x0:.1},{yy:.1} L{x1:.1},{yy:.1} ", if i == 0 { "M" } else { "L" });
    }
    let _ = writeln!(o, r##"<path d="{path}" fill="none" stroke="#888" stroke-width="1.5"/>"##);
    // Failed per second: red bars.
    for (i, p) in per_second.iter().enumerate() {
        if p.2 > 0 {
            let (x0, yy) = (x(i as f64), y(p.2 as f64));
            let bw = (pw / secs - 1.0).max(1.0);
            let _ = writeln!(
                o,
                r##"<rect x="{x0:.1}" y="{yy:.1}" width="{bw:.1}" height="{:.1}" fill="#d62728"><title>{} failed at {} s</title></rect>"##,
                top + ph - yy,
                p.2,
                i
            );
        }
    }
    for (i, (t, label)) in events.iter().enumerate() {
        let xx = x(*t);
        let ly = top + 12.0 + 12.0 * (i % 4) as f64;
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#1f77b4" stroke-dasharray="4 3"/><text x="{:.1}" y="{ly:.1}" fill="#1f77b4">{}</text>"##,
            top + ph,
            xx + 3.0,
            esc(label)
        );
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="18" text-anchor="end"><tspan fill="#888">— sent/s</tspan>  <tspan fill="#d62728">▮ failed/s</tspan></text>"##,
        w - right
    );
    o.push_str("</svg>\n");
    o
}

/// One line of [`lines`]: a name, a colour and (x, y) points.
pub struct Line<'a> {
    pub name: &'a str,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart with a y axis from 0 (`y_label`) and x in seconds.
pub fn lines(title: &str, y_label: &str, series: &[Line<'_>]) -> String {
    let (w, h, left, right, top, bottom) = (860.0, 300.0, 70.0, 20.0, 40.0, 40.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xmax = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let ymax = nice_max(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max));
    let x = |v: f64| left + pw * v / xmax;
    let y = |v: f64| top + ph - ph * v / ymax;
    let mut o = frame(title, (w, h, left, pw), ymax, y);
    for i in 0..=5 {
        let v = xmax * f64::from(i) / 5.0;
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.0}</text>"#,
            x(v),
            top + ph + 14.0
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the load started</text>"#,
        left + pw / 2.0,
        h - 6.0
    );
    let _ = writeln!(
        o,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    );
    let mut legend = w - right;
    for s in series.iter().rev() {
        let d: String = s
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}{:.1},{:.1} ", if i == 0 { "M" } else { "L" }, x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(o, r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.5"/>"#, s.color);
        let _ = writeln!(
            o,
            r#"<text x="{legend:.1}" y="18" text-anchor="end" fill="{}">— {}</text>"#,
            s.color,
            esc(s.name)
        );
        legend -= 8.0 * s.name.len() as f64 + 30.0;
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_only_for_seconds_with_failures() {
        let svg =
            errors_over_time("t <x>", &[(0, 100, 0), (1, 100, 7), (2, 100, 0)], &[(1.2, "kill".into())]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("fill=\"#d62728\"><title>").count(), 1);
        assert!(svg.contains("7 failed at 1 s") && svg.contains("t &lt;x&gt;") && svg.contains(">kill<"));
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(130.0), 200.0);
    }
}
