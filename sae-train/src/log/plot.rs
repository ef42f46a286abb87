//! Training curves (loss, FVU, ...) drawn as a self-contained SVG image, one panel per metric.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::Path;

/// Image width in pixels.
const WIDTH: f64 = 800.0;
/// Height of one panel in pixels.
const PANEL_HEIGHT: f64 = 280.0;
/// Margins around each panel's plot area: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (75.0, 25.0, 30.0, 45.0);
/// Roughly how many tick intervals each axis gets.
const TICK_INTERVALS: usize = 5;
/// Line colours, cycled through per panel (the Tableau 10 palette).
const COLOURS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// One named curve of `(step, value)` points.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// `(step, value)` points; non-finite ones are skipped.
    pub points: &'a [(f64, f64)],
}

/// Writes `panels` (title, curves) stacked vertically to an SVG file at `path`.
/// The file is written to a temporary name beside `path`, then renamed over it.
pub fn write_svg(path: &Path, panels: &[(&str, Vec<Series>)]) -> io::Result<()> {
    let svg = render(panels);
    let mut tmp_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(svg.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Renders the whole image as an SVG document.
fn render(panels: &[(&str, Vec<Series>)]) -> String {
    let height = PANEL_HEIGHT * panels.len().max(1) as f64;
    let mut svg = String::new();
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    for (i, (title, series)) in panels.iter().enumerate() {
        render_panel(&mut svg, PANEL_HEIGHT * i as f64, title, series);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Appends one panel (title, grid, axes, tick labels, curves, legend) whose top edge is at `top`.
fn render_panel(svg: &mut String, top: f64, title: &str, series: &[Series]) {
    let (ml, mr, mt, mb) = MARGIN;
    let (left, right) = (ml, WIDTH - mr);
    let (y_top, y_bottom) = (top + mt, top + PANEL_HEIGHT - mb);
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let curves: Vec<Vec<(f64, f64)>> = series.iter().map(finite).collect();
    let all = curves.iter().flatten();
    let (x_lo, x_hi) = bounds(all.clone().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = bounds(all.map(|p| p.1)).unwrap_or((0.0, 1.0));
    let x_ticks = nice_ticks(x_lo, x_hi, TICK_INTERVALS);
    let y_ticks = nice_ticks(y_lo, y_hi, TICK_INTERVALS);
    // nice_ticks always returns at least two increasing ticks, so the spans are positive.
    let (x0, x1) = (x_ticks[0], x_ticks[x_ticks.len() - 1]);
    let (y0, y1) = (y_ticks[0], y_ticks[y_ticks.len() - 1]);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (right - left);
    let py = |y: f64| y_bottom - (y - y0) / (y1 - y0) * (y_bottom - y_top);

    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        (left + right) / 2.0,
        top + mt - 10.0,
        escape(title)
    );
    let x_step = x_ticks[1] - x_ticks[0];
    for &t in &x_ticks {
        let x = px(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y_top:.1}" x2="{x:.1}" y2="{y_bottom:.1}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y_bottom + 16.0,
            tick_label(t, x_step)
        );
    }
    let y_step = y_ticks[1] - y_ticks[0];
    for &t in &y_ticks {
        let y = py(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            tick_label(t, y_step)
        );
    }
    let _ = writeln!(
        svg,
        r#"<path d="M{left:.1},{y_top:.1} V{y_bottom:.1} H{right:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#,
        (left + right) / 2.0,
        y_bottom + 34.0
    );

    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if let [(x, y)] = curve.as_slice() {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3" fill="{colour}"/>"#,
                px(*x),
                py(*y)
            );
        }
        if curve.is_empty() {
            continue;
        }
        let mut points = String::new();
        for &(x, y) in curve {
            let _ = write!(points, "{:.2},{:.2} ", px(x), py(y));
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
            points.trim_end()
        );
    }

    if series.len() > 1 {
        let longest = series.iter().map(|s| s.name.chars().count()).max();
        let box_w = 40.0 + 7.0 * longest.unwrap_or(0) as f64;
        let box_h = 8.0 + 16.0 * series.len() as f64;
        let bx = right - box_w - 8.0;
        let by = y_top + 8.0;
        let _ = writeln!(
            svg,
            r##"<rect x="{bx:.1}" y="{by:.1}" width="{box_w:.1}" height="{box_h:.1}" fill="white" fill-opacity="0.85" stroke="#999999"/>"##
        );
        for (i, s) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let ly = by + 14.0 + 16.0 * i as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/>"#,
                bx + 6.0,
                ly - 4.0,
                bx + 26.0,
                ly - 4.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{ly:.1}">{}</text>"#,
                bx + 32.0,
                escape(s.name)
            );
        }
    }
}

/// Smallest and largest of `values`, or `None` when there are none.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Evenly spaced "nice" ticks (steps of 1, 2 or 5 times a power of ten) that cover `lo..=hi`
/// in about `intervals` steps; always at least two increasing ticks, even when `lo == hi`.
fn nice_ticks(lo: f64, hi: f64, intervals: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        // A flat range gets widened around its value so the axis still has a span.
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    };
    let raw = (hi - lo) / intervals.max(1) as f64;
    let magnitude = 10f64.powi(raw.log10().floor() as i32);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    (first..=last.max(first + 1))
        .map(|i| i as f64 * step)
        .collect()
}

/// Formats tick value `v` with just enough decimals for a tick spacing of `step`.
fn tick_label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    // Steps are 1, 2 or 5 times a power of ten, so the power's decimals always suffice.
    let magnitude = step.abs().log10().floor();
    let decimals = if magnitude < 0.0 {
        -magnitude as usize
    } else {
        0
    };
    format!("{v:.decimals$}")
}

/// Escapes text for use inside SVG markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts two tick lists are equal up to floating-point rounding.
    fn assert_ticks(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn nice_ticks_known_ranges() {
        // 1/5 = 0.2 is already nice.
        assert_ticks(&nice_ticks(0.0, 1.0, 5), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        // 7/5 = 1.4 rounds up to 2.
        assert_ticks(&nice_ticks(0.0, 7.0, 5), &[0.0, 2.0, 4.0, 6.0, 8.0]);
        // 94/5 = 18.8 rounds up to 20; the axis widens to multiples of 20 around 3..97.
        assert_ticks(
            &nice_ticks(3.0, 97.0, 5),
            &[0.0, 20.0, 40.0, 60.0, 80.0, 100.0],
        );
        // 2/5 = 0.4 rounds up to 0.5.
        assert_ticks(&nice_ticks(-1.0, 1.0, 5), &[-1.0, -0.5, 0.0, 0.5, 1.0]);
        // 9990/5 = 1998 rounds up to 2000.
        assert_ticks(
            &nice_ticks(0.0, 9990.0, 5),
            &[0.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0],
        );
        // A flat range at 5 widens by 10% to 4.5..5.5; 1/5 = 0.2.
        assert_ticks(
            &nice_ticks(5.0, 5.0, 5),
            &[4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6],
        );
        // A flat range at 0 widens to -1..1; 2/5 = 0.4 rounds up to 0.5.
        assert_ticks(&nice_ticks(0.0, 0.0, 5), &[-1.0, -0.5, 0.0, 0.5, 1.0]);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(tick_label(-1e-17, 0.5), "0.0");
        assert_eq!(tick_label(4000.0, 2000.0), "4000");
        assert_eq!(tick_label(0.025, 0.005), "0.025");
        assert_eq!(tick_label(0.00015, 0.00005), "0.00015");
    }

    #[test]
    fn svg_is_well_formed() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("sae-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("curves.svg");
        let loss = [(0.0, 2.0), (100.0, 1.0), (200.0, f64::NAN), (300.0, 0.5)];
        let aux = [(0.0, f64::INFINITY), (150.0, 0.25)];
        let fvu = [(0.0, 0.9), (300.0, 0.1)];
        let nan_only = [(0.0, f64::NAN)];
        let panels = [
            (
                "loss",
                vec![
                    Series {
                        name: "mse",
                        points: &loss,
                    },
                    Series {
                        name: "aux <k>",
                        points: &aux,
                    },
                    Series {
                        name: "empty",
                        points: &[],
                    },
                ],
            ),
            (
                "FVU",
                vec![Series {
                    name: "fvu",
                    points: &fvu,
                }],
            ),
            (
                "dead",
                vec![Series {
                    name: "nan",
                    points: &nan_only,
                }],
            ),
            ("nothing", vec![]),
        ];
        write_svg(&path, &panels)?;
        let svg = std::fs::read_to_string(&path)?;
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // One polyline per series with a finite point (mse, aux, fvu); "empty" and "nan" draw
        // nothing, though every panel still gets its axes.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<path").count(), 4);
        // aux has a single finite point, which is also marked with a dot.
        assert_eq!(svg.matches("<circle").count(), 1);
        // Only the first panel has more than one series, so only it has a legend.
        assert!(svg.contains("aux &lt;k&gt;"));
        assert_eq!(svg.matches(r#"fill-opacity="0.85""#).count(), 1);
        assert!(svg.contains(">FVU</text>"));
        assert!(!dir.join("curves.svg.tmp").exists());
        std::fs::remove_dir_all(&dir)
    }
}
