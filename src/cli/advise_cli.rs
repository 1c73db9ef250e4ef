//! `sluice advise`: the requirement changes that clear every fixable finding of a release, as a
//! patch to the app's requirements file.

use std::{collections::BTreeMap, path::Path};

use crate::api::{ModelRelease, release::FixAdvice};

/// Lines of context around each change, as `diff -u`.
const CONTEXT: usize = 3;

/// Prints the upgrades the release's stages name, as a unified diff of `requirements` when that
/// file exists, or as one line per package when it does not.
pub async fn advise(
    name: &str,
    namespace: Option<&str>,
    requirements: &Path,
) -> anyhow::Result<()> {
    let (ns, _, release) = super::read_release(name, namespace).await?;
    let fixes = release_fixes(&release);
    if fixes.is_empty() {
        eprintln!("ModelRelease {ns}/{name}: no finding names a version that fixes it");
        return Ok(());
    }
    for f in &fixes {
        eprintln!("# {f}");
    }
    match std::fs::read_to_string(requirements) {
        Ok(text) => print!(
            "{}",
            requirements_patch(&requirements.display().to_string(), &text, &fixes)
        ),
        Err(_) => {
            eprintln!(
                "# {} not found: the changes, one per package (pass --requirements for a patch)",
                requirements.display()
            );
            for f in &fixes {
                println!("{}=={}", f.package, f.fixed_in);
            }
        }
    }
    Ok(())
}

/// Every stage's upgrades, one per package (the highest version when stages differ).
pub fn release_fixes(release: &ModelRelease) -> Vec<FixAdvice> {
    let mut by_package: BTreeMap<String, FixAdvice> = BTreeMap::new();
    let stages = release.status.iter().flat_map(|s| &s.stages);
    for fix in stages.flat_map(|s| &s.fixes) {
        let entry = by_package
            .entry(normalize(&fix.package))
            .or_insert_with(|| fix.clone());
        if crate::text::version_cmp(&fix.fixed_in, &entry.fixed_in).is_gt() {
            entry.fixed_in = fix.fixed_in.clone();
        }
        for id in &fix.ids {
            if !entry.ids.contains(id) {
                entry.ids.push(id.clone());
            }
        }
    }
    by_package.into_values().collect()
}

/// PEP 503 normalized name: runs of `-`, `_`, `.` are one `-`, lowercase.
fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The requirement a line names, normalized, when it is a plain `name<op>version` requirement.
fn requirement_name(line: &str) -> Option<String> {
    let code = line.split('#').next()?.trim();
    let end = code.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))?;
    let rest = code[end..].trim_start();
    let pinned = ["==", ">=", "~=", "<=", "!=", "<", ">"]
        .iter()
        .any(|op| rest.starts_with(op));
    (end > 0 && pinned).then(|| normalize(&code[..end]))
}

/// `text` (the requirements file at `path`) with each fixed package pinned to its fix, and the
/// fixed packages it does not list appended, as a unified diff (`git apply` / `patch -p1`).
pub fn requirements_patch(path: &str, text: &str, fixes: &[FixAdvice]) -> String {
    let old: Vec<&str> = text.lines().collect();
    let mut new: Vec<String> = old.iter().map(|l| (*l).to_string()).collect();
    let mut listed = std::collections::BTreeSet::new();
    for (i, line) in old.iter().enumerate() {
        let Some(name) = requirement_name(line) else {
            continue;
        };
        if let Some(fix) = fixes.iter().find(|f| normalize(&f.package) == name) {
            let keep = line[..line
                .find(['=', '>', '<', '~', '!', ' '])
                .unwrap_or(line.len())]
                .to_string();
            new[i] = format!("{keep}=={}", fix.fixed_in);
            listed.insert(name);
        }
    }
    for fix in fixes {
        if !listed.contains(&normalize(&fix.package)) {
            new.push(format!("{}=={}", fix.package, fix.fixed_in));
        }
    }
    unified_diff(path, &old, &new)
}

/// A unified diff of `old` → `new` where `new` changes lines in place and may append at the end.
fn unified_diff(path: &str, old: &[&str], new: &[String]) -> String {
    let changed: Vec<usize> = (0..new.len())
        .filter(|&i| old.get(i).is_none_or(|o| *o != new[i]))
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    let path = path.trim_start_matches("./");
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    // Group changes whose context windows touch into one hunk.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &i in &changed {
        match groups.last_mut() {
            Some((_, end)) if i <= *end + 2 * CONTEXT + 1 => *end = i,
            _ => groups.push((i, i)),
        }
    }
    for (first, last) in groups {
        let start = first.saturating_sub(CONTEXT);
        let old_end = (last + CONTEXT + 1).min(old.len());
        let new_end = (last + CONTEXT + 1).min(new.len());
        let old_len = old_end.saturating_sub(start);
        let new_len = new_end - start;
        let at = |len: usize| if len == 0 { start } else { start + 1 };
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            at(old_len),
            at(new_len)
        ));
        for i in start..new_end.max(old_end) {
            match (
                old.get(i).filter(|_| i < old_end),
                new.get(i).filter(|_| i < new_end),
            ) {
                (Some(o), Some(n)) if *o == n => out.push_str(&format!(" {o}\n")),
                (o, n) => {
                    if let Some(o) = o {
                        out.push_str(&format!("-{o}\n"));
                    }
                    if let Some(n) = n {
                        out.push_str(&format!("+{n}\n"));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(package: &str, installed: &str, fixed_in: &str, id: &str) -> FixAdvice {
        FixAdvice {
            package: package.into(),
            installed: installed.into(),
            fixed_in: fixed_in.into(),
            ids: vec![id.into()],
        }
    }

    #[test]
    fn the_patch_pins_each_fixed_package_in_place_and_appends_the_unlisted() {
        let text = "# serving\nFlask==2.2.2  # web\nnumpy==1.26.4\nscikit-learn==1.3.0\npandas==2.1.0\ngunicorn==21.2.0\nrequests>=2.0\n";
        let fixes = [
            fix("flask", "2.2.2", "2.2.5", "PYSEC-2023-62"),
            fix("Requests", "2.31.0", "2.32.0", "GHSA-9wx4"),
            fix("idna", "3.3", "3.7", "PYSEC-2024-60"),
        ];
        let patch = requirements_patch("requirements.txt", text, &fixes);
        // One hunk (the changes are within twice the context of each other); `git apply` takes it.
        let expected = "--- a/requirements.txt\n+++ b/requirements.txt\n@@ -1,7 +1,8 @@\n # serving\n\
-Flask==2.2.2  # web\n+Flask==2.2.5\n numpy==1.26.4\n scikit-learn==1.3.0\n pandas==2.1.0\n gunicorn==21.2.0\n\
-requests>=2.0\n+requests==2.32.0\n+idna==3.7\n";
        assert_eq!(patch, expected, "{patch}");
    }

    #[test]
    fn changes_far_apart_are_separate_hunks_with_three_lines_of_context() {
        let lines: Vec<String> = (0..20).map(|i| format!("pkg{i}==1.0")).collect();
        let text = lines.join("\n");
        let patch = requirements_patch(
            "requirements.txt",
            &text,
            &[
                fix("pkg1", "1.0", "1.1", "A"),
                fix("pkg15", "1.0", "2.0", "B"),
            ],
        );
        assert!(
            patch.contains("@@ -1,5 +1,5 @@\n pkg0==1.0\n-pkg1==1.0\n+pkg1==1.1\n"),
            "{patch}"
        );
        assert!(
            patch.contains("@@ -13,7 +13,7 @@\n pkg12==1.0\n"),
            "{patch}"
        );
        assert!(
            patch.ends_with("+pkg15==2.0\n pkg16==1.0\n pkg17==1.0\n pkg18==1.0\n"),
            "{patch}"
        );
    }

    #[test]
    fn nothing_to_change_is_an_empty_patch_and_odd_lines_are_left_alone() {
        let text = "-r base.txt\n--index-url https://pypi.example\nflask==2.2.5\n";
        assert_eq!(
            requirements_patch("r.txt", text, &[fix("flask", "2.2.5", "2.2.5", "X")]),
            ""
        );
        assert_eq!(requirement_name("-r base.txt"), None);
        assert_eq!(requirement_name("git+https://x/y"), None);
        assert_eq!(
            requirement_name("Zope.Interface ~= 5.0"),
            Some("zope-interface".into())
        );
    }
}
