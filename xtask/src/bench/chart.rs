//! The PNG chart: requests per second, the balancer's CPU per 1,000 requests and p99
//! latency per contender, keep-alive and new connection per request side by side; bars are
//! medians, whiskers the min–max range.
use std::{path::Path, sync::OnceLock};

use anyhow::{Result, anyhow};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    contender::Kind,
    results::{Results, Row},
    stats::Spread,
    wrk::Mode,
};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];

/// Registers DejaVu Sans (Debian's fonts-dejavu-core) as plotters' "sans-serif".
fn font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{FONT}: not a font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

pub fn draw(results: &Results, path: &Path) -> Result<()> {
    font()?;
    // Contenders with figures, in table order, by their short names.
    let mut names: Vec<&'static str> = Vec::new();
    for r in results.table.iter().filter(|r| r.note.is_none()) {
        let name = Kind::from_id(r.id).map_or(r.label, Kind::short);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(anyhow!("no figures to draw"));
    }
    let get = |label: &str, mode: Mode| -> Option<&Row> {
        results
            .table
            .iter()
            .find(|r| Kind::from_id(r.id).map_or(r.label, Kind::short) == label && r.mode == Some(mode) && r.note.is_none())
    };
    let root = BitMapBackend::new(path, (1280, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let title = format!(
        "xlb benchmark, {}: {} cores, {} rounds × {} s, median and min–max",
        results.started_utc, results.host.cores, results.plan.rounds, results.plan.load.seconds
    );
    let root = root.titled(&title, ("sans-serif", 24)).map_err(|e| anyhow!("{e:?}"))?;
    let (body, footer) = root.split_vertically(root.dim_in_pixel().1 - 50);
    let missing: Vec<String> =
        results.table.iter().filter(|r| r.mode.is_none() || r.figures.rps.is_none()).map(|r| format!("{}: {}", r.label, r.note.as_deref().unwrap_or("no figures"))).collect();
    let note = if missing.is_empty() {
        "all contenders on the same 2 cores as the client and the backends; closed loop, so latency is at saturation".to_owned()
    } else {
        format!("not shown: {}", missing.join("; "))
    };
    // The legend, once for all panels, where no bar can hide it.
    let mut x = 20;
    for (mode, color) in Mode::ALL.into_iter().zip(COLORS) {
        footer.draw(&Rectangle::new([(x, 6), (x + 14, 20)], color.filled())).map_err(|e| anyhow!("{e:?}"))?;
        footer.draw(&Text::new(mode.label(), (x + 20, 5), ("sans-serif", 15))).map_err(|e| anyhow!("{e:?}"))?;
        x += 40 + 9 * mode.label().len() as i32;
    }
    footer
        .draw(&Text::new(note, (20, 30), ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90))))
        .map_err(|e| anyhow!("{e:?}"))?;
    let panels = body.split_evenly((3, 1));
    panel(&panels[0], &names, "requests per second", &|label, mode| get(label, mode).and_then(|r| r.figures.rps), &|v| {
        format!("{:.1}k", v / 1000.0)
    })?;
    let balancer = |label: &str, mode| {
        get(label, mode).filter(|r| !Kind::from_id(r.id).is_some_and(Kind::is_direct)).and_then(|r| r.balancer_cpu_ms_per_1k)
    };
    panel(&panels[1], &names, "balancer CPU, ms per 1,000 requests", &balancer, &|v| format!("{v:.1}"))?;
    panel(&panels[2], &names, "p99 latency, ms", &|label, mode| get(label, mode).and_then(|r| r.figures.p99_ms), &|v| {
        format!("{v:.1}")
    })?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn panel(
    area: &Area<'_>,
    names: &[&str],
    what: &str,
    value: &dyn Fn(&str, Mode) -> Option<Spread>,
    label: &dyn Fn(f64) -> String,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Debug| anyhow!("{e:?}");
    let n = names.len();
    let spreads: Vec<Spread> = names.iter().flat_map(|name| Mode::ALL.map(|m| value(name, m))).flatten().collect();
    // One outlier's whisker should not flatten every bar: the axis stops at 2.5 times the
    // largest median, and longer whiskers are cut there and labelled with their maximum.
    let medians = spreads.iter().map(|s| s.median).fold(0.0f64, f64::max);
    let maxes = spreads.iter().map(|s| s.max).fold(0.0f64, f64::max);
    let top = maxes.min(2.5 * medians).max(1e-9) * 1.15;
    let cut = top / 1.15;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_left(20)
        .caption(what, ("sans-serif", 20))
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(8)
        .y_label_formatter(&|v| label(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let width = 0.36;
    for (k, mode) in Mode::ALL.into_iter().enumerate() {
        let color = COLORS[k];
        let offset = if k == 0 { -width / 2.0 - 0.01 } else { width / 2.0 + 0.01 };
        let bars: Vec<(f64, Spread)> =
            names.iter().enumerate().filter_map(|(i, name)| Some((i as f64 + offset, value(name, mode)?))).collect();
        chart
            .draw_series(bars.iter().map(|(x, s)| {
                Rectangle::new([(x - width / 2.0, 0.0), (x + width / 2.0, s.median)], color.filled())
            }))
            .map_err(|e| err(&e))?;
        for (x, s) in &bars {
            let cap = width / 5.0;
            let high = s.max.min(cut);
            if s.max > cut {
                let style = TextStyle::from(("sans-serif", 11)).pos(Pos::new(HPos::Left, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(format!("max {}", label(s.max)), (x + cap, cut * 0.97), style)))
                    .map_err(|e| err(&e))?;
            }
            let whisker = vec![(*x, s.min), (*x, high)];
            let caps = [vec![(x - cap, s.min), (x + cap, s.min)], vec![(x - cap, high), (x + cap, high)]];
            chart
                .draw_series(std::iter::once(whisker).chain(caps).map(|p| PathElement::new(p, BLACK.stroke_width(1))))
                .map_err(|e| err(&e))?;
            let style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .draw_series(std::iter::once(Text::new(label(s.median), (*x, high + top * 0.01), style)))
                .map_err(|e| err(&e))?;
        }
    }
    // Category names under each group, placed in pixels: plotters' numeric axis would put
    // its ticks wherever its step lands.
    let style = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, name) in names.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64, 0.0));
        area.draw(&Text::new(name.to_string(), (px - area.get_base_pixel().0, py - area.get_base_pixel().1 + 10), style.clone()))
            .map_err(|e| err(&e))?;
    }
    Ok(())
}
