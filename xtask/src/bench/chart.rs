//! One horizontal bar chart per table: median per peer, a line from min to
//! max, the value at the bar's end. Text needs a TrueType font (DejaVu
//! Sans); without one the chart is skipped and the report says so.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail};
use plotters::prelude::*;

use super::{Peer, Table};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = FONT_PATHS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!("no DejaVuSans.ttf in {FONT_PATHS:?} (apt-get install fonts-dejavu-core)")
            })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "DejaVuSans.ttf is not a usable font".to_owned())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn colour(p: Peer) -> RGBColor {
    match p {
        Peer::Direct => RGBColor(150, 150, 150),
        Peer::Netmux => RGBColor(31, 119, 180),
        Peer::SshDefault => RGBColor(255, 127, 14),
        Peer::SshAes => RGBColor(214, 39, 40),
        Peer::Rathole => RGBColor(148, 103, 189),
        Peer::Socat => RGBColor(140, 86, 75),
        Peer::SocatPair => RGBColor(188, 143, 143),
        Peer::Quinn => RGBColor(44, 160, 44),
    }
}

/// Draws `t` into `path` (PNG).
pub fn bar_chart(path: &Path, t: &Table) -> anyhow::Result<()> {
    font()?;
    let bars: Vec<(Peer, &str, f64, f64, f64)> = t
        .rows
        .iter()
        .filter_map(|r| {
            let m = r.median()?;
            let (lo, hi) = r.min_max()?;
            Some((r.peer, r.name(), m, lo, hi))
        })
        .collect();
    if bars.is_empty() {
        bail!("no values to draw");
    }
    let n = bars.len();
    let xmax = bars.iter().map(|b| b.4).fold(0.0, f64::max) * 1.18;
    let xmax = if xmax > 0.0 { xmax } else { 1.0 };
    let height = 90 + 44 * u32::try_from(n).unwrap_or(8);
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let caption = format!("{}. {} [{}]", t.scenario, t.title, t.profile);
    let caption: String = caption.chars().take(95).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(190)
        .build_cartesian_2d(0.0..xmax, (0..n as i32).into_segmented())
        .map_err(e)?;
    let labels: Vec<&str> = bars.iter().map(|b| b.1).collect();
    let better = if t.higher_better {
        "higher is better"
    } else {
        "lower is better"
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(format!("{} ({better}; line: min-max)", t.unit))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels
                .get(usize::try_from(*i).unwrap_or(usize::MAX))
                .map(|s| (*s).to_owned())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (i, (peer, _, m, lo, hi)) in bars.iter().enumerate() {
        let i = i as i32;
        let c = colour(*peer);
        chart
            .draw_series(std::iter::once({
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*m, SegmentValue::Exact(i + 1)),
                    ],
                    c.mix(0.8).filled(),
                );
                bar.set_margin(6, 6, 0, 0);
                bar
            }))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (*lo, SegmentValue::CenterOf(i)),
                    (*hi, SegmentValue::CenterOf(i)),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {}", super::report::fmt_val(*m)),
                (hi.max(*m), SegmentValue::CenterOf(i)),
                ("sans-serif", 13).into_font(),
            )))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
