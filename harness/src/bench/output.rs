//! The bench's outputs: the markdown tables on stdout (and `bench.md`), `bench.csv`, and the SVG
//! chart `throughput.svg`. `bench.json` is the [`BenchReport`] as serde writes it.

use std::fmt::Write as _;

use super::{BenchReport, CellReport, CellStatus, DmaPath, HEADLINE, Metric, Workload};

/// `12.3` below 100, `123` above; `–` for nothing.
fn num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() < 10.0 {
        format!("{v:.2}")
    } else if v.abs() < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn kib(bytes: f64) -> String {
    if bytes == 0.0 {
        "0".into()
    } else if bytes >= (1 << 20) as f64 {
        format!("{:.1} MiB", bytes / (1 << 20) as f64)
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}

/// `123†` (the dagger when the repeats spread more than 10%).
fn median(m: &Metric) -> String {
    format!(
        "{}{}",
        num(m.stat.median),
        if m.stat.varies { "†" } else { "" }
    )
}

/// `123 (0.81×)`.
fn with_ratio(m: &Metric) -> String {
    match m.ratio {
        Some(r)
            if m.key.starts_with("read")
                || m.key.starts_with("write")
                || m.key.starts_with("rand") =>
        {
            format!("{} ({r:.2}×)", median(m))
        }
        _ => median(m),
    }
}

/// The throughput columns present in the report, in table order: reads, writes, random reads.
fn throughput_columns(r: &BenchReport) -> Vec<(String, String)> {
    let mut cols = Vec::new();
    for op in ["read", "write", "randread"] {
        for w in Workload::ALL {
            let key = format!("{op}_{}", w.key());
            if let Some(m) = r
                .cells
                .iter()
                .find_map(|c| c.metrics.iter().find(|m| m.key == key))
            {
                let label = match op {
                    "randread" => format!("rand {} IOPS", w.label()),
                    _ => m.label.clone(),
                };
                cols.push((key, label));
            }
        }
    }
    cols
}

/// The reasons of cells that were not (fully) measured, each once, with its cells; `n/a [N]` in
/// the tables points here.
fn footnotes(r: &BenchReport) -> Vec<(String, Vec<String>)> {
    let mut notes: Vec<(String, Vec<String>)> = Vec::new();
    for c in r.cells.iter().filter(|c| c.status != CellStatus::Skipped) {
        let Some(why) = &c.reason else { continue };
        let name = format!("{}/{}", c.platform, c.path);
        match notes.iter_mut().find(|(w, _)| w == why) {
            Some((_, cells)) => cells.push(name),
            None => notes.push((why.clone(), vec![name])),
        }
    }
    notes
}

fn note_mark(notes: &[(String, Vec<String>)], c: &CellReport) -> String {
    c.reason
        .as_ref()
        .and_then(|why| notes.iter().position(|(w, _)| w == why))
        .map_or(String::new(), |i| format!(" [{}]", i + 1))
}

/// A table header. `align` has one letter per column, `l` (text) or `r` (numbers); columns past
/// its end are numbers.
fn header(out: &mut String, cols: &[&str], align: &str) {
    out.push('|');
    for c in cols {
        let _ = write!(out, " {c} |");
    }
    out.push_str("\n|");
    for (i, _) in cols.iter().enumerate() {
        out.push_str(if align.as_bytes().get(i) == Some(&b'l') {
            "---|"
        } else {
            "---:|"
        });
    }
    out.push('\n');
}

/// The whole result as markdown: the run line, the throughput table, boot/costs/memory, the
/// targets, notes, image sizes.
pub fn markdown(r: &BenchReport) -> String {
    let mut out = String::new();
    let m = &r.meta;
    let _ = writeln!(
        out,
        "secure-guest bench, {}: {} (load average {:.1} at the start, {:.1} at the end); {}, \
         TCG{}; {} profile, {} rounds{}, {:.0} s.\n",
        m.date,
        m.host,
        m.load.0,
        m.load.1,
        m.qemu,
        if r.cells.iter().any(|c| c.accel == "kvm" && c.is_measured()) {
            " (and KVM rows)"
        } else {
            ""
        },
        m.profile,
        m.rounds,
        if m.rounds < m.repeats {
            format!(" of {}", m.repeats)
        } else {
            String::new()
        },
        m.wall_s
    );
    let notes = footnotes(r);
    let shown: Vec<&CellReport> = r
        .cells
        .iter()
        .filter(|c| c.status != CellStatus::Skipped)
        .collect();

    let cols = throughput_columns(r);
    let _ = writeln!(
        out,
        "Throughput in MB/s (10^6 bytes/s; random 4 KiB reads in IOPS), timed by the guest around \
         each transfer; median of the rounds; (0.81×): against `direct` on the same machine in \
         this run; †: the rounds spread more than 10%.\n"
    );
    let mut names = vec!["machine", "path"];
    names.extend(cols.iter().map(|c| c.1.as_str()));
    header(&mut out, &names, "ll");
    for c in &shown {
        let _ = write!(out, "| {} | {} |", c.platform, c.path);
        for (i, (key, _)) in cols.iter().enumerate() {
            let cell = match c.metric(key) {
                Some(m) => with_ratio(m),
                None if i == 0 => format!("n/a{}", note_mark(&notes, c)),
                None => "–".into(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }

    let h = HEADLINE.key();
    let _ = writeln!(
        out,
        "\nBoot (wall time of a whole QEMU run, the guest doing init only, against the no-op \
         payload in the same QEMU configuration; ratio: median of the alternating pairs), costs \
         per MiB moved in the {} runs, memory high-water marks (the largest of any run), and the \
         guest's clock against the host's:\n",
        HEADLINE.label()
    );
    header(
        &mut out,
        &[
            "machine",
            "path",
            "boot ms",
            "no-op ms",
            "boot/no-op",
            "copied/MiB",
            "zeroed/MiB",
            "hypercalls/MiB",
            "IOMMU cmds/MiB",
            "notifies/MiB",
            "pool waits/MiB",
            "pool high-water",
            "heap high-water",
            "clock guest/host",
        ],
        "ll",
    );
    for c in &shown {
        let _ = write!(out, "| {} | {} |", c.platform, c.path);
        if !c.is_measured() {
            let _ = writeln!(out, " n/a{} |{}", note_mark(&notes, c), " – |".repeat(11));
            continue;
        }
        let get = |k: &str| c.metric(k).map_or("–".to_string(), median);
        let bytes = |k: &str| c.metric(k).map_or("–".to_string(), |m| kib(m.stat.median));
        let most = |prefix: &str| {
            c.metrics
                .iter()
                .filter(|m| m.key.starts_with(prefix))
                .map(|m| m.stat.max)
                .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
                .map_or("–".to_string(), kib)
        };
        let clock = c.metric("clock_ratio").map_or("–".to_string(), |m| {
            format!(
                "{:.3} ({:.3}–{:.3}){}",
                m.stat.median,
                m.stat.min,
                m.stat.max,
                c.clock_source
                    .as_ref()
                    .map_or(String::new(), |s| format!(", {s}"))
            )
        });
        let row = [
            get("boot_ms"),
            get("noop_ms"),
            c.metric("boot_ratio").map_or("–".to_string(), |m| {
                format!(
                    "{}×{}",
                    num(m.stat.median),
                    if m.stat.varies { "†" } else { "" }
                )
            }),
            bytes(&format!("copied_per_mib_{h}")),
            bytes(&format!("zeroed_per_mib_{h}")),
            get(&format!("hypercalls_per_mib_{h}")),
            get(&format!("iommu_commands_per_mib_{h}")),
            get(&format!("notifies_per_mib_{h}")),
            get(&format!("pool_waits_per_mib_{h}")),
            most("pool_high_water"),
            most("heap_high_water"),
            clock,
        ];
        for v in row {
            let _ = write!(out, " {v} |");
        }
        out.push('\n');
    }

    if !r.targets.is_empty() {
        out.push_str("\nTargets:\n\n");
        header(
            &mut out,
            &["target", "cell", "value", "result", "why"],
            "llrll",
        );
        for t in &r.targets {
            let _ = writeln!(
                out,
                "| {} | {}/{} | {} | {} | {} |",
                t.target,
                t.platform,
                t.path,
                t.value.map_or("–".to_string(), |v| format!("{v:.2}×")),
                match t.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "not measured",
                },
                t.note
            );
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        for (i, (why, cells)) in notes.iter().enumerate() {
            let _ = writeln!(out, "[{}] {} ({})  ", i + 1, why, cells.join(", "));
        }
    }
    for n in &m.notes {
        let _ = writeln!(out, "\nNote: {n}");
    }
    let failures = r.failures();
    if !failures.is_empty() {
        out.push_str("\nFailures:\n");
        for f in &failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    if !r.images.is_empty() {
        let list: Vec<String> = r
            .images
            .iter()
            .map(|i| format!("`{}` {:.1} KiB", i.name, i.bytes as f64 / 1024.0))
            .collect();
        let _ = writeln!(out, "\nImages (stripped): {}.", list.join(", "));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per figure (and one per cell that has none, with its reason).
pub fn csv(r: &BenchReport) -> String {
    let mut out = String::from(
        "platform,machine,accel,path,status,section,metric,unit,n,median,min,max,spread,varies,\
         ratio_to_direct,samples,note\n",
    );
    let status = |c: &CellReport| match c.status {
        CellStatus::Ok => "ok",
        CellStatus::NotAvailable => "n/a",
        CellStatus::BootOnly => "boot-only",
        CellStatus::Skipped => "skipped",
    };
    for c in r.cells.iter().filter(|c| c.status != CellStatus::Skipped) {
        let lead = format!(
            "{},{},{},{},{}",
            csv_field(&c.platform),
            c.machine,
            c.accel,
            csv_field(&c.path),
            status(c)
        );
        if c.metrics.is_empty() {
            let _ = writeln!(
                out,
                "{lead},,,,,,,,,,,,{}",
                csv_field(c.reason.as_deref().unwrap_or(""))
            );
            continue;
        }
        for m in &c.metrics {
            let s = &m.stat;
            let samples: Vec<String> = m.samples.iter().map(|v| format!("{v}")).collect();
            let _ = writeln!(
                out,
                "{lead},{},{},{},{},{},{},{},{:.4},{},{},{},{}",
                m.section,
                m.key,
                csv_field(m.unit),
                s.n,
                s.median,
                s.min,
                s.max,
                s.spread,
                s.varies,
                m.ratio.map_or(String::new(), |r| format!("{r:.4}")),
                samples.join(" "),
                csv_field(c.reason.as_deref().unwrap_or(""))
            );
        }
    }
    out
}

/// The colour of each path's bars.
fn colour(p: &str) -> &'static str {
    match p {
        "direct" => "#4e79a7",
        "bounce" => "#f28e2b",
        "iommu" => "#59a14f",
        "iommu+bounce" => "#e15759",
        "ddw" => "#b07aa1",
        "iommu-static" => "#76b7b2",
        _ => "#999999",
    }
}

/// A round axis maximum and step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.25);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|f| f * mag)
        .find(|s| s * 5.0 >= max)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart: one panel per headline figure (sequential read and write, 64 KiB
/// requests, queue depth full), a group per platform, a bar per DMA path with its min–max
/// whisker; a path the platform cannot run is a gap marked `n/a`.
pub fn svg(r: &BenchReport) -> String {
    let k = HEADLINE.key();
    let panels = [
        (
            format!("read_{k}"),
            format!("Sequential read, {}", HEADLINE.label()),
        ),
        (
            format!("write_{k}"),
            format!("Sequential write, {}", HEADLINE.label()),
        ),
    ];
    // Platforms with a figure in some panel (boot-only KVM rows have none).
    let mut platforms: Vec<&str> = Vec::new();
    for c in &r.cells {
        let has = panels.iter().any(|(key, _)| c.metric(key).is_some());
        if has && !platforms.contains(&c.platform.as_str()) {
            platforms.push(&c.platform);
        }
    }
    let paths: Vec<&str> = DmaPath::ALL.iter().map(|p| p.as_str()).collect();
    let (bar, gap, left, top, panel_h, plot_h) = (22.0, 28.0, 64.0, 70.0, 250.0, 170.0);
    let group_w = bar * paths.len() as f64 + gap;
    let width = (left + group_w * platforms.len().max(1) as f64 + 20.0).max(760.0);
    let height = top + panel_h * panels.len() as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="14" font-weight="bold">secure-guest virtio-blk throughput per DMA path (MB/s, median, min–max)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="34" fill="#555">{}</text>"##,
        esc(&format!(
            "{}, {}, TCG, {} rounds; {}",
            r.meta.date, r.meta.qemu, r.meta.rounds, r.meta.host
        ))
    );
    for (i, p) in paths.iter().enumerate() {
        let x = left + i as f64 * 120.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="44" width="12" height="12" fill="{}"/><text x="{}" y="54">{}</text>"#,
            colour(p),
            x + 16.0,
            esc(p)
        );
    }
    for (pi, (key, title)) in panels.iter().enumerate() {
        let y0 = top + pi as f64 * panel_h;
        let base = y0 + 20.0 + plot_h;
        let max = r
            .cells
            .iter()
            .filter_map(|c| c.metric(key))
            .map(|m| m.stat.max)
            .fold(0.0, f64::max);
        let (amax, step) = axis(max);
        let scale = plot_h / amax;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{:.0}" font-size="12" font-weight="bold">{}</text>"#,
            y0 + 12.0,
            esc(title)
        );
        let mut t = 0.0;
        while t <= amax + step / 2.0 {
            let y = base - t * scale;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
                width - 20.0,
                left - 6.0,
                y + 4.0,
                if step >= 1.0 {
                    format!("{t:.0}")
                } else {
                    num(t)
                }
            );
            t += step;
        }
        for (gi, plat) in platforms.iter().enumerate() {
            let gx = left + gap / 2.0 + gi as f64 * group_w;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                gx + bar * paths.len() as f64 / 2.0,
                base + 16.0,
                esc(plat)
            );
            for (bi, path) in paths.iter().enumerate() {
                let x = gx + bi as f64 * bar;
                let cell = r
                    .cells
                    .iter()
                    .find(|c| c.platform == *plat && c.path == *path);
                match cell.and_then(|c| c.metric(key)) {
                    Some(m) => {
                        let h = m.stat.median * scale;
                        let _ = writeln!(
                            s,
                            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {}: {} MB/s (min {}, max {})</title></rect>"#,
                            x + 1.0,
                            base - h,
                            bar - 2.0,
                            colour(path),
                            esc(plat),
                            esc(path),
                            num(m.stat.median),
                            num(m.stat.min),
                            num(m.stat.max)
                        );
                        let cx = x + bar / 2.0;
                        let (ylo, yhi) = (base - m.stat.min * scale, base - m.stat.max * scale);
                        let _ = writeln!(
                            s,
                            r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{ylo:.1}" y2="{yhi:.1}" stroke="black"/>"#
                        );
                        let _ = writeln!(
                            s,
                            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                            yhi - 3.0,
                            num(m.stat.median)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="8" fill="#999" transform="rotate(-90 {:.1} {:.1})">n/a</text>"##,
                            x + bar / 2.0 + 3.0,
                            base - 4.0,
                            x + bar / 2.0 + 3.0,
                            base - 4.0
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<line x1="{left}" x2="{:.0}" y1="{base:.1}" y2="{base:.1}" stroke="black"/>"#,
            width - 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}
