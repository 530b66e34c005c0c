//! A strict parser of the Prometheus text exposition format (0.0.4), for tests and tools that
//! read `/metrics`: it refuses what a lenient scraper would let through (a sample before its
//! `# TYPE`, a family split in two, a duplicate series, bad names or escapes, a histogram whose
//! buckets shrink or whose `+Inf` bucket is not its count, a missing final newline).

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `text`; `Err` names the line and the rule it breaks.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (word, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let body = parts.next().unwrap_or("");
            match word {
                "HELP" | "TYPE" => {
                    if !valid_metric_name(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if current.as_deref() != Some(name) {
                        if let Some(prev) = current.take() {
                            finished.insert(prev);
                        }
                        if finished.contains(name) {
                            return Err(at(format!("family {name} appears twice")));
                        }
                        current = Some(name.to_owned());
                    }
                    if word == "TYPE" {
                        if !matches!(
                            body,
                            "counter" | "gauge" | "histogram" | "summary" | "untyped"
                        ) {
                            return Err(at(format!("unknown type {body:?}")));
                        }
                        if types.insert(name.to_owned(), body.to_owned()).is_some() {
                            return Err(at("second TYPE".into()));
                        }
                    } else if !helps.insert(name.to_owned()) {
                        return Err(at("second HELP".into()));
                    }
                }
                _ => {} // a comment
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = sample_line(line).map_err(&at)?;
        let family = family_of(&name, &types);
        let Some(kind) = types.get(&family) else {
            return Err(at(format!("sample of {family} before its TYPE")));
        };
        if current.as_deref() != Some(family.as_str()) {
            return Err(at(format!("sample of {family} outside its family's block")));
        }
        if kind == "histogram" {
            let suffix = &name[family.len()..];
            if !matches!(suffix, "_bucket" | "_sum" | "_count") {
                return Err(at("histogram sample is not _bucket, _sum or _count".into()));
            }
            if suffix == "_bucket" && !labels.contains_key("le") {
                return Err(at("_bucket without le".into()));
            }
        } else if name != family {
            return Err(at(format!("{name} in family {family}")));
        }
        if kind == "counter" && value < 0.0 {
            return Err(at("negative counter".into()));
        }
        let key = (
            name.clone(),
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        );
        if !seen.insert(key) {
            return Err(at("duplicate series".into()));
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// A series' labels (but `le`), in order.
type LabelSet = Vec<(String, String)>;

fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

/// Buckets cumulative in `le` order, `+Inf` present and equal to `_count`.
fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) -> Result<(), String> {
    for (family, kind) in types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<LabelSet, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<LabelSet, f64> = BTreeMap::new();
        for s in samples {
            let others = |s: &Sample| -> Vec<(String, String)> {
                s.labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            if s.name == format!("{family}_bucket") {
                let le = parse_value(&s.labels["le"]).map_err(|e| format!("{family}: le {e}"))?;
                series.entry(others(s)).or_default().push((le, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(others(s), s.value);
            }
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family} {labels:?}: buckets are not cumulative"));
            }
            let Some(&(le, inf)) = buckets.last() else {
                continue;
            };
            if le != f64::INFINITY {
                return Err(format!("{family} {labels:?}: no +Inf bucket"));
            }
            if counts.get(&labels) != Some(&inf) {
                return Err(format!("{family} {labels:?}: +Inf bucket is not _count"));
            }
        }
    }
    Ok(())
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v
            .parse::<f64>()
            .map_err(|_| format!("{v:?} is not a number")),
    }
}

type Parsed = (String, BTreeMap<String, String>, f64);

fn sample_line(line: &str) -> Result<Parsed, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        rest = match inner.strip_prefix('}') {
            Some(after) => after,
            None => sample_labels_tail(inner, &mut labels)?,
        };
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected a space before the value")?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().ok_or("no value")?)?;
    if let Some(ts) = parts.next()
        && ts.parse::<i64>().is_err()
    {
        return Err("bad timestamp".into());
    }
    if parts.next().is_some() {
        return Err("trailing text".into());
    }
    Ok((name.to_owned(), labels, value))
}

/// The labels after `{`, up to and past the closing `}`; returns what follows it.
fn sample_labels_tail<'a>(
    mut text: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        let eq = text.find('=').ok_or("label without =")?;
        let lname = &text[..eq];
        if !valid_label_name(lname) {
            return Err(format!("bad label name {lname:?}"));
        }
        let body = text[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            let (i, c) = chars.next().ok_or("unterminated label value")?;
            match c {
                '"' => break i,
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err("bad escape in a label value".into()),
                },
                c => value.push(c),
            }
        };
        if labels.insert(lname.to_owned(), value).is_some() {
            return Err(format!("label {lname} twice"));
        }
        let after = &body[end + 1..];
        if let Some(next) = after.strip_prefix(',') {
            text = next;
        } else if let Some(rest) = after.strip_prefix('}') {
            return Ok(rest);
        } else {
            return Err("expected , or } after a label".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_well_formed_exposition() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
        let s = parse(text).expect("valid");
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].labels["y"], "q\"");
        assert_eq!(s[0].value, 3.0);
    }

    #[test]
    fn refuses_what_a_lenient_scraper_would_take() {
        for bad in [
            "a 1\n",                                                      // no TYPE
            "# TYPE a gauge\na 1",                                        // no final newline
            "# TYPE a gauge\na 1\na 2\n",                                 // duplicate series
            "# TYPE a gauge\na{1x=\"v\"} 1\n",                            // bad label name
            "# TYPE a gauge\na{x=v} 1\n",                                 // unquoted value
            "# TYPE a gauge\na{x=\"\\q\"} 1\n",                           // bad escape
            "# TYPE a counter\na -1\n",                                   // negative counter
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n", // split family
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
            "# TYPE a gauge\na one\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
