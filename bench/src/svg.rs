//! Hand-written SVG bar charts: no font or system dependencies, text left to the viewer's fonts.
//! Horizontal bars because configuration names are long.

use std::fmt::Write;

const LABEL_W: f64 = 330.0;
const PLOT_W: f64 = 520.0;
const RIGHT_W: f64 = 90.0;
const ROW_H: f64 = 20.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = 45.0;

/// One series of a grouped chart: a name, a colour, and one optional value per category
/// (None is drawn as "not measured"), with optional (low, high) whiskers. Categories listed in
/// `not_applicable` get nothing drawn (e.g. a native configuration has no native baseline).
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub values: Vec<Option<f64>>,
    pub whiskers: Vec<Option<(f64, f64)>>,
    pub not_applicable: Vec<bool>,
}

/// A vertical reference line, e.g. ratio 1.0 or a target.
pub struct RefLine {
    pub x: f64,
    pub label: String,
    pub color: &'static str,
}

/// `s` escaped for SVG text and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" axis maximum and tick step covering `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Grouped horizontal bars: one group per category, one bar per series.
pub fn grouped_hbars(
    title: &str,
    x_label: &str,
    categories: &[String],
    series: &[Series],
    refs: &[RefLine],
) -> String {
    let n_series = series.len().max(1) as f64;
    let group_h = ROW_H * n_series + 8.0;
    let height = TOP + group_h * categories.len() as f64 + BOTTOM + 20.0;
    let width = LABEL_W + PLOT_W + RIGHT_W;
    let max_v = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied().chain(s.whiskers.iter().flatten().map(|w| w.1)))
        .chain(refs.iter().map(|r| r.x))
        .fold(0.0f64, f64::max);
    let (axis_max, step) = nice_axis(max_v * 1.05);
    let x = |v: f64| LABEL_W + PLOT_W * (v / axis_max).clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" font-size="14" font-weight="bold" text-anchor="middle">{}</text>
"#,
        width / 2.0,
        esc(title)
    );
    // Legend.
    let mut lx = LABEL_W;
    for se in series {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="30" width="10" height="10" fill="{}"/><text x="{}" y="39">{}</text>"#,
            se.color,
            lx + 14.0,
            esc(&se.name)
        );
        lx += 24.0 + 7.0 * se.name.len() as f64;
    }
    s.push('\n');
    // Grid and ticks.
    let plot_bottom = TOP + group_h * categories.len() as f64;
    let mut t = 0.0;
    while t <= axis_max + step * 0.01 {
        let xt = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xt:.1}" y1="{TOP}" x2="{xt:.1}" y2="{plot_bottom}" stroke="#ddd"/><text x="{xt:.1}" y="{}" text-anchor="middle">{}</text>"##,
            plot_bottom + 14.0,
            fmt_tick(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LABEL_W + PLOT_W / 2.0,
        plot_bottom + 32.0,
        esc(x_label)
    );
    for (ci, cat) in categories.iter().enumerate() {
        let gy = TOP + group_h * ci as f64 + 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            gy + group_h / 2.0,
            esc(cat)
        );
        for (si, se) in series.iter().enumerate() {
            let y = gy + ROW_H * si as f64;
            if se.not_applicable.get(ci).copied().unwrap_or(false) {
                continue;
            }
            match se.values.get(ci).copied().flatten() {
                Some(v) => {
                    let _ = write!(
                        s,
                        r#"<rect x="{LABEL_W}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                        y + 2.0,
                        (x(v) - LABEL_W).max(0.5),
                        ROW_H - 4.0,
                        se.color,
                        esc(&se.name),
                        fmt_tick(v)
                    );
                    if let Some((lo, hi)) = se.whiskers.get(ci).copied().flatten() {
                        let ym = y + ROW_H / 2.0;
                        let _ = write!(
                            s,
                            r#"<line x1="{:.1}" y1="{ym:.1}" x2="{:.1}" y2="{ym:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
                            x(lo),
                            x(hi),
                            x(lo),
                            ym - 4.0,
                            x(lo),
                            ym + 4.0,
                            x(hi),
                            ym - 4.0,
                            x(hi),
                            ym + 4.0
                        );
                    }
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                        x(se.whiskers.get(ci).copied().flatten().map_or(v, |w| w.1.max(v))) + 4.0,
                        y + ROW_H / 2.0 + 4.0,
                        fmt_tick(v)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{}" y="{:.1}" fill="#888">not measured</text>"##,
                        LABEL_W + 4.0,
                        y + ROW_H / 2.0 + 4.0
                    );
                }
            }
        }
    }
    for r in refs {
        let xr = x(r.x);
        let _ = writeln!(
            s,
            r#"<line x1="{xr:.1}" y1="{}" x2="{xr:.1}" y2="{plot_bottom}" stroke="{}" stroke-dasharray="4 3"/><text x="{xr:.1}" y="{}" fill="{}" text-anchor="middle" font-size="10">{}</text>"#,
            TOP - 4.0,
            r.color,
            TOP - 6.0,
            r.color,
            esc(&r.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_is_nice() {
        assert_eq!(nice_axis(1.05), (1.25, 0.25));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (m, s) = nice_axis(23_456.0);
        assert!(m >= 23_456.0 && (m / s).round() <= 6.0);
    }

    #[test]
    fn renders_bars_gaps_and_escapes() {
        let svg = grouped_hbars(
            "t <1>",
            "x",
            &["a & b".to_owned(), "c".to_owned()],
            &[Series {
                name: "s".into(),
                color: "#123456",
                values: vec![Some(1.0), None],
                whiskers: vec![Some((0.9, 1.1)), None],
                not_applicable: vec![false, false],
            }],
            &[RefLine { x: 1.0, label: "1.0".into(), color: "red" }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &amp; b") && svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("not measured"));
        assert_eq!(svg.matches("<rect x=").count(), 2, "legend + one bar");
    }
}
