//! Static HTML dashboards (`sae dashboard`): an index of every latent that fired, per hook
//! point, with a histogram of firing frequencies and each latent's frequency, activations, explanation and most activating snippet, and
//! one page per latent with its top contexts, each token shaded by the latent's activation,
//! and the images it fires on most, its activation on each image region drawn over them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use sae_core::SaeError;
use sae_core::tensor_file::write_atomic;

use crate::cache::Cache;
use crate::error::{InterpError, Result};
use crate::examples::{Context, LatentExamples, SamplingConfig, latent_examples};
use crate::explanations::Explanations;

/// What a dashboard holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DashboardSummary {
    /// The index page.
    pub index: std::path::PathBuf,
    /// Latent pages written.
    pub latent_pages: usize,
}

/// Writes `out/index.html` and `out/<hook index>/<latent>.html` for `cache`.
pub fn write_dashboard(
    cache: &Cache,
    explanations: Option<&Explanations>,
    out: &Path,
    sampling: &SamplingConfig,
) -> Result<DashboardSummary> {
    if sampling.top == 0 {
        return Err(InterpError::Invalid(
            "a dashboard needs at least 1 top context per latent".into(),
        ));
    }
    if within(out, &cache.dir) {
        return Err(InterpError::Invalid(format!(
            "the dashboard folder {} is the cache folder or inside it: give another folder",
            out.display()
        )));
    }
    let mut index = page_start("SAE latents");
    let info = &cache.info;
    let _ = writeln!(
        index,
        "<h1>SAE latents</h1><p>SAE <code>{}</code> on <code>{}</code>: {} sequences, {} tokens.</p>",
        escape(&info.sae),
        escape(&info.data),
        info.sequences,
        info.tokens
    );
    let mut pages = 0;
    let mut images = BTreeSet::new();
    for (h, (hook, meta)) in info.hooks.iter().enumerate() {
        let examples = latent_examples(cache, hook, sampling)?;
        let explained = explanations.and_then(|e| e.get(hook));
        let _ = writeln!(
            index,
            "<h2><code>{}</code></h2><p>{} of {} latents fired over {} tokens ({} records).</p>",
            escape(hook),
            examples.len(),
            meta.num_latents,
            meta.tokens,
            meta.records
        );
        index.push_str(&density_histogram(&examples));
        index.push_str(
            "<table><tr><th>latent</th><th>firing</th><th>max</th><th>mean</th><th>explanation</th><th>top context</th></tr>\n",
        );
        for latent in &examples {
            let explanation = explained.and_then(|e| e.get(&latent.latent));
            let href = format!("{h}/{}.html", latent.latent);
            let _ = writeln!(
                index,
                "<tr><td><a href=\"{href}\">{}</a></td><td>{:.3}%</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td class=\"ctx\">{}</td></tr>",
                latent.latent,
                100.0 * latent.frequency,
                latent.max_activation,
                latent.mean_activation,
                escape(explanation.map_or("", String::as_str)),
                latent.top.first().map_or(String::new(), |c| context_html(
                    cache,
                    c,
                    latent.max_activation
                ))
            );
            let page = latent_page(cache, hook, latent, explanation.map(String::as_str));
            write_atomic(&out.join(&href), page.as_bytes())?;
            pages += 1;
            images.extend(latent.images.iter().map(|i| i.image));
        }
        index.push_str("</table>\n");
    }
    index.push_str("</body></html>\n");
    for image in images {
        let (from, to) = (cache.image_file(image)?, out.join(&info.images[image].file));
        let parent = to.parent().unwrap_or(out);
        std::fs::create_dir_all(parent).map_err(SaeError::io(parent))?;
        std::fs::copy(&from, &to).map_err(SaeError::io(&from))?;
    }
    let index_file = out.join("index.html");
    write_atomic(&index_file, index.as_bytes())?;
    Ok(DashboardSummary {
        index: index_file,
        latent_pages: pages,
    })
}

/// Lowest firing frequency the density histogram shows, as a power of ten.
const DENSITY_FLOOR: f64 = -7.0;
/// Width of a histogram bin, in powers of ten.
const DENSITY_BIN: f64 = 0.25;

/// An SVG histogram of the latents' firing frequencies on a log scale (the feature density
/// plot of SAE dashboards): one bar per bin of `DENSITY_BIN` powers of ten that holds latents.
fn density_histogram(examples: &[LatentExamples]) -> String {
    let bins = (-DENSITY_FLOOR / DENSITY_BIN) as usize;
    let mut counts = vec![0usize; bins];
    for latent in examples {
        let at = ((latent.frequency.log10() - DENSITY_FLOOR) / DENSITY_BIN).floor();
        counts[(at.max(0.0) as usize).min(bins - 1)] += 1;
    }
    let tallest = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (bar, height) = (12.0, 80.0);
    let mut svg = format!(
        "<p>Firing frequency (log10, {DENSITY_FLOOR} to 0):</p><svg width=\"{}\" height=\"{}\" role=\"img\">",
        bar * bins as f64,
        height + 14.0
    );
    for (i, &count) in counts.iter().enumerate().filter(|&(_, &c)| c > 0) {
        let h = height * count as f64 / tallest;
        let lo = DENSITY_FLOOR + i as f64 * DENSITY_BIN;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h:.1}\" fill=\"#c60\"><title>{count} latents fire on 10^{lo:.2} to 10^{:.2} of tokens</title></rect>",
            i as f64 * bar,
            height - h,
            bar - 1.0,
            lo + DENSITY_BIN
        );
    }
    for power in (DENSITY_FLOOR as i32)..=0 {
        let x = (f64::from(power) - DENSITY_FLOOR) / DENSITY_BIN * bar;
        let _ = write!(
            svg,
            "<text x=\"{x}\" y=\"{}\" font-size=\"10\">{power}</text>",
            height + 12.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Whether `path` is `dir` or lies inside it (through links and relative paths; a path that
/// does not exist yet is taken from its nearest existing ancestor).
fn within(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return false,
        }
    }
    let Ok(mut resolved) = existing.canonicalize() else {
        return false;
    };
    resolved.extend(rest.iter().rev());
    resolved.starts_with(&dir)
}

/// One latent's page.
fn latent_page(
    cache: &Cache,
    hook: &str,
    latent: &LatentExamples,
    explanation: Option<&str>,
) -> String {
    let mut page = page_start(&format!("latent {} at {hook}", latent.latent));
    let _ = writeln!(
        page,
        "<p><a href=\"../index.html\">all latents</a></p><h1>Latent {} at <code>{}</code></h1>",
        latent.latent,
        escape(hook)
    );
    if let Some(explanation) = explanation {
        let _ = writeln!(page, "<p class=\"explanation\">{}</p>", escape(explanation));
    }
    let _ = writeln!(
        page,
        "<p>Fires on {} tokens ({:.3}%); max activation {:.4}, mean {:.4}.</p><h2>Top contexts</h2><ol>",
        latent.firings,
        100.0 * latent.frequency,
        latent.max_activation,
        latent.mean_activation
    );
    for context in &latent.top {
        let _ = writeln!(
            page,
            "<li><span class=\"meta\">{:.4} &middot; sequence {}, token {}</span><div class=\"ctx\">{}</div></li>",
            context.max_activation(),
            context.sequence,
            context.position,
            context_html(cache, context, latent.max_activation)
        );
    }
    page.push_str("</ol>\n");
    if !latent.images.is_empty() {
        page.push_str("<h2>Top images</h2>\n");
    }
    for heat in &latent.images {
        let image = &cache.info.images[heat.image];
        let _ = write!(
            page,
            "<figure><div class=\"img\"><img src=\"../{}\" alt=\"image {}\"><div class=\"grid\" style=\"grid-template-columns:repeat({},1fr);grid-template-rows:repeat({},1fr)\">",
            escape(&image.file),
            heat.image,
            image.cols,
            image.rows
        );
        for &a in &heat.activations {
            let alpha = shade(a, latent.max_activation);
            let _ = write!(
                page,
                "<div style=\"background:rgba(255,0,0,{alpha:.3})\" title=\"{a:.4}\"></div>"
            );
        }
        let _ = writeln!(
            page,
            "</div></div><figcaption class=\"meta\">{:.4} &middot; sequence {}</figcaption></figure>",
            heat.max, image.sequence
        );
    }
    page.push_str("</body></html>\n");
    page
}

/// How strongly to shade activation `a` of a latent whose largest is `max` (0 to 1).
fn shade(a: f32, max: f32) -> f32 {
    if max > 0.0 {
        (a / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A context's tokens, each where the latent fired shaded by its activation relative to `max`
/// (shown on hover), the activating token outlined.
fn context_html(cache: &Cache, context: &Context, max: f32) -> String {
    let mut html = String::new();
    for (i, (&id, &a)) in context.tokens.iter().zip(&context.activations).enumerate() {
        let text = escape(&cache.text(id).replace('\n', "\u{21b5}"));
        let class = if context.start + i == context.position {
            " class=\"at\""
        } else {
            ""
        };
        if a == 0.0 {
            let _ = write!(html, "<span{class}>{text}</span>");
            continue;
        }
        let alpha = shade(a, max);
        let _ = write!(
            html,
            "<span{class} style=\"background:rgba(255,140,0,{alpha:.3})\" title=\"{a:.4}\">{text}</span>"
        );
    }
    html
}

/// The start of a page, with its style.
fn page_start(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font-family:sans-serif;margin:2em;}}table{{border-collapse:collapse;}}\
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;}}\
.ctx{{font-family:monospace;white-space:pre-wrap;}}.at{{outline:1px solid #c60;}}\
.meta{{color:#666;font-size:small;}}.explanation{{font-size:large;}}li{{margin-bottom:1em;}}\
figure{{display:inline-block;margin:0 1em 1em 0;}}.img{{position:relative;display:inline-block;}}\
.img img{{display:block;width:256px;}}.grid{{position:absolute;inset:0;display:grid;}}\
</style></head><body>\n",
        escape(title)
    )
}

/// `s` with HTML's special characters escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
