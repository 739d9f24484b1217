//! PNG plots of the aggregated results: plotters draws grid, lines and markers into a pixel
//! buffer, the built-in font writes the labels, `image` encodes the PNG.

use super::aggregate::Row;
use super::font::{text_width, Canvas};
use anyhow::{anyhow, Result};
use plotters::prelude::*;

pub const WIDTH: u32 = 820;
pub const HEIGHT: u32 = 560;

/// A method's colour, the same in every plot.
pub fn method_color(method: &str) -> [u8; 3] {
    match method {
        "vanilla" => [110, 110, 110],
        "reweight" => [230, 130, 20],
        "sparse" => [40, 90, 200],
        "rest" => [200, 30, 40],
        _ => [60, 160, 60],
    }
}

/// A line (with markers) or a horizontal reference line across the plot.
pub struct Series {
    pub label: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed across the whole x range at this y (`points` unused).
    pub hline: Option<f64>,
}

pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// x is drawn on a log10 axis (all x must be > 0).
    pub x_log: bool,
    pub y_range: (f64, f64),
    pub series: Vec<Series>,
}

/// A decade as a tick label: 0.001, 0.01 … 1000, else 1e-5, 1e12.
fn decade_label(k: i32) -> String {
    match k {
        k if (-4..0).contains(&k) => format!("0.{}1", "0".repeat((-k - 1) as usize)),
        k if (0..=3).contains(&k) => format!("{}", 10i64.pow(k as u32)),
        k => format!("1e{k}"),
    }
}

fn nice_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e:?}")
}

/// Renders a figure to PNG bytes.
pub fn render(fig: &Figure) -> Result<Vec<u8>> {
    let (w, h) = (WIDTH, HEIGHT);
    let (left, right, top, bottom) = (80u32, 200u32, 46u32, 64u32);
    let tx = |x: f64| if fig.x_log { x.log10() } else { x };
    let xs: Vec<f64> = fig
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite() && (!fig.x_log || *x > 0.0))
        .map(tx)
        .collect();
    let (mut x0, mut x1) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if !x0.is_finite() {
        (x0, x1) = if fig.x_log { (-4.0, 0.0) } else { (0.0, 1.0) };
    }
    let x_ticks: Vec<(f64, String)> = if fig.x_log {
        x0 = x0.floor();
        x1 = x1.ceil();
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        (x0 as i32..=x1 as i32)
            .map(|k| (k as f64, decade_label(k)))
            .collect()
    } else {
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        (0..=5)
            .map(|i| {
                let v = x0 + (x1 - x0) * i as f64 / 5.0;
                (v, nice_label(v))
            })
            .collect()
    };
    let (y0, y1) = fig.y_range;
    let y_ticks: Vec<(f64, String)> = (0..=5)
        .map(|i| {
            let v = y0 + (y1 - y0) * i as f64 / 5.0;
            (v, nice_label(v))
        })
        .collect();

    let mut buf = vec![255u8; (w * h * 3) as usize];
    let mut x_tick_px = Vec::new();
    let mut y_tick_px = Vec::new();
    let (plot_l, plot_t, plot_r, plot_b);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let area = root.margin(top, bottom, left, right);
        let mut chart = ChartBuilder::on(&area)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        let grid = RGBColor(225, 225, 225);
        for (v, _) in &x_ticks {
            chart
                .draw_series(LineSeries::new([(*v, y0), (*v, y1)], grid))
                .map_err(err)?;
            x_tick_px.push(chart.backend_coord(&(*v, y0)));
        }
        for (v, _) in &y_ticks {
            chart
                .draw_series(LineSeries::new([(x0, *v), (x1, *v)], grid))
                .map_err(err)?;
            y_tick_px.push(chart.backend_coord(&(x0, *v)));
        }
        for s in &fig.series {
            let c = RGBColor(s.color[0], s.color[1], s.color[2]);
            if let Some(y) = s.hline {
                // Dashed: 40 segments, every other one drawn.
                let n = 40;
                for i in (0..n).step_by(2) {
                    let a = x0 + (x1 - x0) * i as f64 / n as f64;
                    let b = x0 + (x1 - x0) * (i + 1) as f64 / n as f64;
                    chart
                        .draw_series(LineSeries::new([(a, y), (b, y)], c.stroke_width(2)))
                        .map_err(err)?;
                }
                continue;
            }
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite() && (!fig.x_log || p.0 > 0.0))
                .map(|&(x, y)| (tx(x), y))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(err)?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(err)?;
        }
        let (tl, br) = (
            chart.backend_coord(&(x0, y1)),
            chart.backend_coord(&(x1, y0)),
        );
        (plot_l, plot_t, plot_r, plot_b) = (tl.0, tl.1, br.0, br.1);
        root.draw(&Rectangle::new(
            [(plot_l, plot_t), (plot_r, plot_b)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        for (i, s) in fig.series.iter().enumerate() {
            let y = plot_t + 10 + 22 * i as i32;
            let c = RGBColor(s.color[0], s.color[1], s.color[2]);
            root.draw(&Rectangle::new(
                [(plot_r + 14, y + 5), (plot_r + 40, y + 8)],
                c.filled(),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
    }

    let black = [0, 0, 0];
    let mut canvas = Canvas {
        rgb: &mut buf,
        width: w,
        height: h,
    };
    let tw = |t: &str, s: u32| text_width(t, s) as i64;
    canvas.text(
        (w as i64 - tw(&fig.title, 2)) / 2,
        12,
        &fig.title,
        2,
        black,
        false,
    );
    for ((x, y), (_, label)) in x_tick_px.iter().zip(&x_ticks) {
        canvas.text(
            *x as i64 - tw(label, 1) / 2,
            *y as i64 + 8,
            label,
            1,
            black,
            false,
        );
    }
    for ((x, y), (_, label)) in y_tick_px.iter().zip(&y_ticks) {
        canvas.text(
            *x as i64 - tw(label, 1) - 8,
            *y as i64 - 3,
            label,
            1,
            black,
            false,
        );
    }
    let mid_x = (plot_l + plot_r) as i64 / 2;
    canvas.text(
        mid_x - tw(&fig.x_label, 2) / 2,
        plot_b as i64 + 26,
        &fig.x_label,
        2,
        black,
        false,
    );
    let mid_y = (plot_t + plot_b) as i64 / 2;
    canvas.text(
        14,
        mid_y + tw(&fig.y_label, 2) / 2,
        &fig.y_label,
        2,
        black,
        true,
    );
    for (i, s) in fig.series.iter().enumerate() {
        let y = plot_t as i64 + 10 + 22 * i as i64;
        let label = if s.hline.is_some() {
            format!("{} (dense)", s.label)
        } else {
            s.label.clone()
        };
        canvas.text(plot_r as i64 + 46, y, &label, 1, black, false);
    }

    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)?;
    Ok(png.into_inner())
}

fn ratio_rows<'a>(rows: &'a [Row], dataset: &str, ratio: f64) -> Vec<&'a Row> {
    let rs: Vec<&Row> = rows
        .iter()
        .filter(|r| r.dataset == dataset && r.ratio == ratio)
        .collect();
    // Several epoch counts for one ratio (collected grids): plot the longest.
    let epochs = rs.iter().map(|r| r.epochs).max().unwrap_or(0);
    rs.into_iter().filter(|r| r.epochs == epochs).collect()
}

/// Conflicting-group accuracy against density (log x) for one ratio; dense methods as dashed lines.
pub fn conflicting_vs_density(rows: &[Row], dataset: &str, ratio: f64) -> Figure {
    let rs = ratio_rows(rows, dataset, ratio);
    let mut series = Vec::new();
    for m in super::grid::METHODS {
        let mine: Vec<&&Row> = rs.iter().filter(|r| r.method == m).collect();
        if mine.is_empty() {
            continue;
        }
        if super::grid::is_sparse_method(m) {
            series.push(Series {
                label: m.into(),
                color: method_color(m),
                points: mine.iter().map(|r| (r.density, r.conflicting.0)).collect(),
                hline: None,
            });
        } else {
            series.push(Series {
                label: m.into(),
                color: method_color(m),
                points: Vec::new(),
                hline: Some(mine[0].conflicting.0),
            });
        }
    }
    Figure {
        title: format!("{dataset}, {ratio} % conflicting: conflicting-group accuracy"),
        x_label: "density".into(),
        y_label: "conflicting accuracy (%)".into(),
        x_log: true,
        y_range: (0.0, 100.0),
        series,
    }
}

/// Test accuracy (the unbiased accuracy where the test split is unbiased) against the training
/// FLOPs of a run (log x), one series per method.
pub fn accuracy_vs_flops(rows: &[Row], dataset: &str, ratio: f64) -> Figure {
    let rs = ratio_rows(rows, dataset, ratio);
    let series = super::grid::METHODS
        .iter()
        .filter_map(|&m| {
            let pts: Vec<(f64, f64)> = rs
                .iter()
                .filter(|r| r.method == m)
                .map(|r| (r.train_flops, r.accuracy.0))
                .collect();
            (!pts.is_empty()).then(|| Series {
                label: m.into(),
                color: method_color(m),
                points: pts,
                hline: None,
            })
        })
        .collect();
    Figure {
        title: format!("{dataset}, {ratio} % conflicting: accuracy vs training cost"),
        x_label: "training FLOPs per run".into(),
        y_label: if crate::data::registry::test_split_is_unbiased(dataset) {
            "unbiased accuracy (%)".into()
        } else {
            "test accuracy (%)".into()
        },
        x_log: true,
        y_range: (0.0, 100.0),
        series,
    }
}
