//! iPXE scripts served through `/redirect`.
//!
//! iPXE resolves a relative URI against the URI of the script that names it. A script that
//! lives at `menus/install.ipxe` but is answered at `/redirect` would have `kernel vmlinuz`
//! fetch `/vmlinuz` instead of `/menus/vmlinuz`. So before serving such a script, relative
//! URIs of the image and SAN commands are rewritten to absolute paths on this server, exactly as
//! iPXE would have resolved them had it fetched the script from its own location.

use std::borrow::Cow;

/// The commands whose arguments name URIs, with the options of theirs that take a value.
struct UriCommand {
    names: &'static [&'static str],
    value_options: &'static [&'static str],
    /// Image commands take one URI, then arguments for the image; SAN commands take URIs
    /// only (several for multipath).
    all_positionals: bool,
}

const URI_COMMANDS: &[UriCommand] = &[
    UriCommand {
        names: &[
            "chain",
            "kernel",
            "initrd",
            "imgfetch",
            "module",
            "imgexec",
            "imgload",
            "imgselect",
        ],
        value_options: &["-n", "--name", "-t", "--timeout"],
        all_positionals: false,
    },
    UriCommand {
        names: &["sanboot", "sanhook"],
        // -n is --no-describe here, and takes no value.
        value_options: &[
            "-d",
            "--drive",
            "-f",
            "--filename",
            "-e",
            "--extra",
            "-l",
            "--label",
            "-u",
            "--uuid",
        ],
        all_positionals: true,
    },
];

pub fn is_ipxe_script(head: &[u8]) -> bool {
    head.starts_with(b"#!ipxe")
}

/// Rewrites relative image URIs in `script` against `base_dir`, the URL path of the script's
/// directory (starting and ending with `/`). Returns the script unchanged when `base_dir` is
/// `/` (there, `/redirect` resolves the same way) or nothing is relative.
pub fn rebase<'a>(script: &'a str, base_dir: &str) -> Cow<'a, str> {
    if base_dir == "/" {
        return Cow::Borrowed(script);
    }
    let mut out = String::with_capacity(script.len() + 64);
    let mut changed = false;
    for line in script.split_inclusive('\n') {
        match rebase_line(line, base_dir) {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(line),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(script)
    }
}

fn rebase_line(line: &str, base_dir: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with(':') {
        return None;
    }
    // Tokens with their byte offsets, so the line is rebuilt with its spacing intact.
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                tokens.push((s, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        tokens.push((s, &line[s..]));
    }

    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let cmd = tokens[i].1;
        i += 1;
        let Some(spec) = URI_COMMANDS.iter().find(|c| c.names.contains(&cmd)) else {
            // Skip to the next command of the line, after `||` or `&&`.
            while i < tokens.len() && !matches!(tokens[i].1, "||" | "&&") {
                i += 1;
            }
            i += 1;
            continue;
        };
        let mut first = true;
        while i < tokens.len() && !matches!(tokens[i].1, "||" | "&&") {
            let tok = tokens[i].1;
            if tok.starts_with('-') && tok.len() > 1 {
                // `--name=x` carries its value; `--name x` takes the next token.
                let takes_value = !tok.contains('=') && spec.value_options.contains(&tok);
                i += if takes_value { 2 } else { 1 };
                continue;
            }
            if (first || spec.all_positionals) && is_relative(tok) {
                edits.push((tokens[i].0, tok.len(), join(base_dir, tok)));
            }
            first = false;
            i += 1;
        }
        i += 1;
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = line.to_string();
    for (off, len, new) in edits.into_iter().rev() {
        out.replace_range(off..off + len, &new);
    }
    Some(out)
}

/// A URI with no scheme that is not an absolute path, and does not start with a setting
/// (`${base-url}/...` is the operator's own absolute URL).
fn is_relative(uri: &str) -> bool {
    if uri.is_empty() || uri.starts_with('/') || uri.starts_with('$') || uri == "||" || uri == "&&"
    {
        return false;
    }
    let scheme_len = uri
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .unwrap_or(uri.len());
    let has_scheme = scheme_len > 0
        && uri.as_bytes()[0].is_ascii_alphabetic()
        && uri[scheme_len..].starts_with(':');
    !has_scheme
}

/// `base_dir` + `rel` with `.` and `..` segments removed (RFC 3986, 5.2.4); `..` never
/// climbs above `/`.
fn join(base_dir: &str, rel: &str) -> String {
    let (path, rest) = match rel.find(['?', '#']) {
        Some(i) => (&rel[..i], &rel[i..]),
        None => (rel, ""),
    };
    let combined = format!("{base_dir}{path}");
    let mut segs: Vec<&str> = Vec::new();
    let parts: Vec<&str> = combined.split('/').skip(1).collect();
    for (n, seg) in parts.iter().enumerate() {
        let last = n + 1 == parts.len();
        match *seg {
            "." => {
                if last {
                    segs.push("");
                }
            }
            ".." => {
                segs.pop();
                if last {
                    segs.push("");
                }
            }
            s => segs.push(s),
        }
    }
    format!("/{}{rest}", segs.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_table() {
        let cases: &[(&str, &str)] = &[
            ("kernel vmlinuz quiet\n", "kernel /menus/vmlinuz quiet\n"),
            ("initrd initrd.gz\n", "initrd /menus/initrd.gz\n"),
            ("chain next.ipxe\n", "chain /menus/next.ipxe\n"),
            (
                "chain --autofree --replace next.ipxe\n",
                "chain --autofree --replace /menus/next.ipxe\n",
            ),
            (
                "imgfetch -n img other/x.bin\n",
                "imgfetch -n img /menus/other/x.bin\n",
            ),
            ("chain ../top.ipxe\n", "chain /top.ipxe\n"),
            ("chain ../../../top.ipxe\n", "chain /top.ipxe\n"),
            ("chain ./x.ipxe?a=b\n", "chain /menus/x.ipxe?a=b\n"),
            (
                "  kernel   vmlinuz-${flavor}  a=b\n",
                "  kernel   /menus/vmlinuz-${flavor}  a=b\n",
            ),
            (
                "isset ${x} || chain fallback.ipxe\n",
                "isset ${x} || chain /menus/fallback.ipxe\n",
            ),
            (
                "chain a.ipxe || chain b.ipxe\n",
                "chain /menus/a.ipxe || chain /menus/b.ipxe\n",
            ),
            (
                "chain --name=x next.ipxe arg\n",
                "chain --name=x /menus/next.ipxe arg\n",
            ),
            (
                "kernel vmlinuz initrd=initrd.img\n",
                "kernel /menus/vmlinuz initrd=initrd.img\n",
            ),
            ("sanboot disk.img\n", "sanboot /menus/disk.img\n"),
            ("sanboot -n disk.img\n", "sanboot -n /menus/disk.img\n"),
            (
                "sanboot --drive 0x81 a.img b.img\n",
                "sanboot --drive 0x81 /menus/a.img /menus/b.img\n",
            ),
            (
                "sanhook -d 0x80 disk.img || goto x\n",
                "sanhook -d 0x80 /menus/disk.img || goto x\n",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(rebase(input, "/menus/"), *want, "{input:?}");
        }
    }

    #[test]
    fn absolute_and_other_lines_unchanged() {
        for line in [
            "kernel http://10.0.0.1/vmlinuz\n",
            "kernel /abs/vmlinuz\n",
            "kernel ${base-url}/vmlinuz\n",
            "chain tftp://srv/x\n",
            "sanboot iscsi:10.0.0.1:::1:iqn.x\n",
            "sanboot --no-describe --drive 0x80\n",
            "sanboot ${root-path}\n",
            "# chain comment.ipxe\n",
            ":label\n",
            "echo chain me\n",
            "set kernel vmlinuz\n",
            "chain\n",
            "goto x || chain\n",
        ] {
            assert_eq!(rebase(line, "/menus/"), line, "{line:?}");
        }
        assert!(matches!(rebase("chain x\n", "/"), Cow::Borrowed(_)));
    }

    #[test]
    fn keeps_line_endings() {
        assert_eq!(
            rebase("#!ipxe\r\nchain x.ipxe\r\nboot", "/m/"),
            "#!ipxe\r\nchain /m/x.ipxe\r\nboot"
        );
    }
}
