//! Reading what the dashboard shows out of Chromium's `--dump-dom` serialization: the page
//! marks its values with `data-` attributes (`data-service="I"`, `data-backend="ADDR"`,
//! `data-k="KEY"`, `data-tile="NAME"`), and text is serialized HTML-escaped.

/// The page's serialized DOM.
pub struct Dom(pub String);

impl Dom {
    /// The text of the first element after `from` carrying `marker` (an attribute, say),
    /// descending into nested elements: `<td data-k="state"><span>healthy</span>` gives
    /// `healthy`. As serialized: `<`, `>` and `&` in it are escaped.
    pub fn text_after(&self, from: usize, marker: &str) -> Option<String> {
        let at = from + self.0[from..].find(marker)? + marker.len();
        let mut rest = &self.0[at..];
        rest = &rest[rest.find('>')? + 1..];
        while let Some(tag) = rest.strip_prefix('<') {
            rest = &tag[tag.find('>')? + 1..];
        }
        Some(rest[..rest.find('<')?].trim().to_owned())
    }

    /// Where the section of the `i`th service starts.
    pub fn service(&self, i: usize) -> Option<usize> {
        self.0.find(&format!("data-service=\"{i}\""))
    }

    /// The text of cell `key` in the row of backend `address` of the `i`th service.
    pub fn cell(&self, i: usize, address: &str, key: &str) -> Option<String> {
        let start = self.service(i)?;
        let row = start + self.0[start..].find(&format!("data-backend=\"{address}\""))?;
        let end = row + self.0[row..].find("</tr>")?;
        self.text_after(row, &format!("data-k=\"{key}\"")).filter(|_| self.0[row..end].contains(&format!("data-k=\"{key}\"")))
    }

    /// A numeric cell, its thousands separators removed.
    pub fn number(&self, i: usize, address: &str, key: &str) -> Option<f64> {
        self.cell(i, address, key)?.replace(',', "").parse().ok()
    }

    /// The value of the summary tile `name`.
    pub fn tile(&self, name: &str) -> Option<String> {
        self.text_after(0, &format!("data-tile=\"{name}\""))
    }

    /// The texts of every `data-k="key"` element inside the rows of class `class`.
    pub fn rows(&self, class: &str, key: &str) -> Vec<String> {
        let marker = format!("class=\"{class}\"");
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(at) = self.0[from..].find(&marker).map(|i| from + i) {
            let end = at + self.0[at..].find("</tr>").unwrap_or(self.0.len() - at);
            if let Some(t) = self.text_after(at, &format!("data-k=\"{key}\"")).filter(|_| self.0[at..end].contains(&format!("data-k=\"{key}\""))) {
                out.push(t);
            }
            from = end;
        }
        out
    }
}

/// `text` as an HTML serializer writes a text node.
pub fn escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\u{a0}', "&nbsp;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_rows_and_tiles() {
        let d = Dom(concat!(
            r#"<div data-tile="services"><b>2</b><span>services</span></div>"#,
            r#"<section data-service="0"><tr data-backend="10.0.0.1:80"><td data-k="name">b1</td><td data-k="state"><span class="pill">healthy</span></td><td data-k="total">1,234</td></tr></section>"#,
            r#"<section data-service="1"><tr data-backend="10.0.0.1:80"><td data-k="name">&lt;x&gt;</td></tr></section>"#,
            r#"<tr class="reload"><td data-k="outcome">rejected</td></tr><tr class="reload"><td>x</td></tr><tr class="reload"><td data-k="outcome">applied</td></tr>"#,
        )
        .into());
        assert_eq!(d.tile("services").as_deref(), Some("2"));
        assert_eq!(d.cell(0, "10.0.0.1:80", "state").as_deref(), Some("healthy"));
        assert_eq!(d.number(0, "10.0.0.1:80", "total"), Some(1234.0));
        assert_eq!(d.cell(1, "10.0.0.1:80", "name").as_deref(), Some("&lt;x&gt;"));
        assert_eq!(d.cell(1, "10.0.0.1:80", "state"), None, "not in that row");
        assert_eq!(d.rows("reload", "outcome"), ["rejected", "applied"]);
        assert_eq!(escaped(r#"<img src=x>&"a""#), r#"&lt;img src=x&gt;&amp;"a""#);
    }
}
