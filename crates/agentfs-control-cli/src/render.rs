//! Human-readable output: one line for a single result, aligned tables for
//! lists, a short report for `status`. Pure functions from replies to text,
//! so they are tested without a daemon.

use std::collections::HashMap;
use std::fmt::Write as _;

use agentfs_control::{
    BindingView, BranchView, CommitView, DiffEntryView, Reply, SnapshotView, StatusView,
};

/// Branch id -> branch name, when the CLI could learn it; used to show
/// `b1 "main"` where a reply carries only the id.
pub type BranchNames = HashMap<String, String>;

/// What the user asked for, so a reply can be worded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Delete,
    Show,
}

/// The text for `reply` (ends with a newline).
pub fn render(verb: Verb, reply: &Reply, names: &BranchNames) -> String {
    match reply {
        Reply::Snapshot(s) if verb == Verb::Create => format!(
            "created snapshot {}{} of branch {}\n",
            s.id,
            name_suffix(&s.name, &s.id, " (name ", ")"),
            branch_label(&s.branch, names)
        ),
        Reply::Snapshot(s) => snapshot_table(std::slice::from_ref(s), names),
        Reply::Snapshots(list) if list.is_empty() => "no snapshots\n".to_owned(),
        Reply::Snapshots(list) => snapshot_table(list, names),
        Reply::Branch(b) if verb == Verb::Create => {
            let from = match &b.from {
                Some(s) => format!(" from snapshot {s}"),
                None => String::new(),
            };
            format!(
                "created branch {}{}{}\n",
                b.id,
                name_suffix(&b.name, &b.id, " ", ""),
                from
            )
        }
        Reply::Branch(b) => branch_table(std::slice::from_ref(b)),
        Reply::Branches(list) if list.is_empty() => "no branches\n".to_owned(),
        Reply::Branches(list) => branch_table(list),
        Reply::Bound { pid, branch } => {
            format!(
                "bound process {pid} to branch {}\n",
                branch_label(branch, names)
            )
        }
        Reply::Unbound {
            pid,
            was_bound: true,
        } => format!("unbound process {pid}\n"),
        Reply::Unbound {
            pid,
            was_bound: false,
        } => format!("process {pid} was not bound\n"),
        Reply::Deleted { id } => format!("deleted {} {id}\n", kind_of_id(id)),
        Reply::Status(status) => status_report(status, names),
        Reply::Commit(c) => commit_report(c),
        Reply::Diff(d) => diff_lines(&d.changes),
        Reply::Detached(d) => format!(
            "lower directory: {}; {} file(s) copied up ({} bytes), {} director(ies) read\n",
            if d.lower { "yes" } else { "no" },
            d.files_copied,
            d.bytes_copied,
            d.dirs_read
        ),
    }
}

/// A diff as one line per change: `A path`, `D path`, `M path (data, mode)`,
/// `R old -> new`, `T path (file -> dir)`.
pub fn diff_lines(changes: &[DiffEntryView]) -> String {
    let mut out = String::new();
    for c in changes {
        let what = if c.what.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.what.join(", "))
        };
        let line = match c.change.as_str() {
            "added" => format!("A {}", c.path),
            "deleted" => format!("D {}", c.path),
            "modified" => format!("M {}{what}", c.path),
            "renamed" => format!("R {} -> {}{what}", c.from.as_deref().unwrap_or("?"), c.path),
            "type_changed" => format!(
                "T {} ({} -> {})",
                c.path,
                c.old_type.as_deref().unwrap_or("?"),
                c.entry_type
            ),
            other => format!("? {} ({other})", c.path),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// What a `branch-commit` did: one line, then the conflicting paths if any.
fn commit_report(c: &CommitView) -> String {
    let mut out = if c.committed {
        format!(
            "committed branch {} into {} ({} change(s) since {}{}) in {:.1} ms\n",
            c.branch,
            c.parent,
            c.branch_changes,
            c.base,
            if c.fast_path {
                "; the parent had not changed: it took the branch's tree"
            } else {
                ""
            },
            c.millis
        )
    } else {
        format!(
            "refused: {} and {} both changed these paths since {}:\n",
            c.branch, c.parent, c.base
        )
    };
    if !c.conflicts.is_empty() {
        let how = match (c.committed, c.resolve) {
            (true, Some(agentfs_control::CommitResolve::Theirs)) => "settled for the branch",
            (true, Some(agentfs_control::CommitResolve::Ours)) => "settled for the parent",
            _ => "",
        };
        if !how.is_empty() {
            let _ = writeln!(out, "{} conflicting path(s), {how}:", c.conflicts.len());
        }
        let rows = c
            .conflicts
            .iter()
            .map(|x| vec![x.path.clone(), x.child.clone(), x.parent.clone()])
            .collect();
        out.push_str(&table(&["PATH", "BRANCH", "PARENT"], rows));
    }
    if c.deleted {
        let _ = writeln!(out, "deleted branch {}", c.branch);
    }
    out
}

/// `b1 "main"` when the name is known and differs from the id, else `b1`.
fn branch_label(id: &str, names: &BranchNames) -> String {
    match names.get(id) {
        Some(name) => format!("{id}{}", name_suffix(name, id, " ", "")),
        None => id.to_owned(),
    }
}

/// `{open}"name"{close}`, the name quoted and escaped, or nothing when the
/// name is empty or just repeats the id.
fn name_suffix(name: &str, id: &str, open: &str, close: &str) -> String {
    if name.is_empty() || name == id {
        String::new()
    } else {
        format!("{open}{name:?}{close}")
    }
}

fn kind_of_id(id: &str) -> &'static str {
    match id.as_bytes().first() {
        Some(b's') => "snapshot",
        Some(b'b') => "branch",
        _ => "object",
    }
}

fn snapshot_table(list: &[SnapshotView], names: &BranchNames) -> String {
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                branch_label(&s.branch, names),
                format_time(s.created_unix),
                if s.children.is_empty() {
                    "-".to_owned()
                } else {
                    s.children.join(",")
                },
            ]
        })
        .collect();
    table(&["ID", "NAME", "BRANCH", "CREATED (UTC)", "BRANCHES"], rows)
}

fn branch_table(list: &[BranchView]) -> String {
    let rows = list
        .iter()
        .map(|b| {
            vec![
                if b.is_default { "*" } else { "" }.to_owned(),
                b.id.clone(),
                b.name.clone(),
                b.from.clone().unwrap_or_else(|| "-".to_owned()),
                format_time(b.created_unix),
                b.open_handles.to_string(),
                b.bound_processes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "DEFAULT",
            "ID",
            "NAME",
            "FROM",
            "CREATED (UTC)",
            "HANDLES",
            "BOUND",
        ],
        rows,
    )
}

fn binding_table(list: &[BindingView]) -> String {
    let rows = list
        .iter()
        .map(|b| vec![b.pid.to_string(), b.branch.clone(), b.branch_name.clone()])
        .collect();
    table(&["PID", "BRANCH", "NAME"], rows)
}

fn status_report(s: &StatusView, names: &BranchNames) -> String {
    // The status carries its own branch list; prefer it for names.
    let mut names = names.clone();
    for b in &s.branches {
        names.insert(b.id.clone(), b.name.clone());
    }
    let mut out = String::new();
    let lines = [
        ("daemon", format!("{} (protocol {})", s.version, s.protocol)),
        ("mountpoint", s.mountpoint.clone()),
        ("backstore", s.backstore.clone()),
        ("data path", s.data_path.clone()),
        ("requests", s.request_channel.clone()),
        ("default branch", branch_label(&s.default_branch, &names)),
        ("your branch", branch_label(&s.caller_branch, &names)),
        ("snapshots", s.snapshots.to_string()),
        ("open handles", s.open_handles.to_string()),
        (
            "content",
            format!(
                "{} objects, {}",
                s.content_objects,
                format_bytes(s.content_bytes)
            ),
        ),
        ("cow clones", s.cow_clones.to_string()),
        ("free space", format_bytes(s.fs_bytes_free)),
    ];
    for (key, value) in lines {
        let _ = writeln!(out, "{:<16}{value}", format!("{key}:"));
    }
    out.push_str("\nbranches:\n");
    out.push_str(&indent(&branch_table(&s.branches)));
    if s.bindings.is_empty() {
        out.push_str("\nbindings: none\n");
    } else {
        out.push_str("\nbindings:\n");
        out.push_str(&indent(&binding_table(&s.bindings)));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// Left-aligned columns two spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1536` -> `1.5 KiB`; below 1 KiB exact bytes.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time(unix: f64) -> String {
    if !unix.is_finite() {
        return "-".to_owned();
    }
    let secs = unix.floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> BranchNames {
        [("b1".to_owned(), "main".to_owned())].into_iter().collect()
    }

    fn snap(name: &str) -> SnapshotView {
        SnapshotView {
            id: "s2".into(),
            name: name.into(),
            branch: "b1".into(),
            created_unix: 0.0,
            children: vec![],
        }
    }

    #[test]
    fn snapshot_create_line() {
        assert_eq!(
            render(
                Verb::Create,
                &Reply::Snapshot(snap("before-refactor")),
                &names()
            ),
            "created snapshot s2 (name \"before-refactor\") of branch b1 \"main\"\n"
        );
        assert_eq!(
            render(
                Verb::Create,
                &Reply::Snapshot(snap("")),
                &BranchNames::new()
            ),
            "created snapshot s2 of branch b1\n"
        );
    }

    #[test]
    fn tables_align_columns() {
        let out = table(
            &["ID", "NAME"],
            vec![
                vec!["s1".into(), "a".into()],
                vec!["s10".into(), "longer".into()],
            ],
        );
        assert_eq!(out, "ID   NAME\ns1   a\ns10  longer\n");
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(format_time(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400.9), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000.0), "2023-11-14 22:13:20");
        assert_eq!(format_time(-1.0), "1969-12-31 23:59:59");
    }

    #[test]
    fn bytes_are_binary_units() {
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn deleted_names_what_kind_of_object() {
        let r = |id: &str| render(Verb::Delete, &Reply::Deleted { id: id.into() }, &names());
        assert_eq!(r("s3"), "deleted snapshot s3\n");
        assert_eq!(r("b4"), "deleted branch b4\n");
    }
}
