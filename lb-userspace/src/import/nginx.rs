//! nginx's configuration syntax, read into a tree of directives with their lines: words
//! separated by blanks, `;` ends a directive, `{ ... }` holds a block, `#` starts a comment,
//! single or double quotes make one word (with `\` escapes).

use anyhow::bail;

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    /// 1-based line of its name.
    pub line: usize,
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The block's directives (none for a simple directive).
    pub fn children(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or_default()
    }

    /// `name args`, as the report quotes it.
    pub fn text(&self) -> String {
        std::iter::once(self.name.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

/// Splits `text` into tokens, each with its line.
fn tokens(text: &str) -> anyhow::Result<Vec<(Token, usize)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            ';' | '{' | '}' => {
                chars.next();
                out.push((
                    match c {
                        ';' => Token::Semicolon,
                        '{' => Token::Open,
                        _ => Token::Close,
                    },
                    line,
                ));
            }
            '"' | '\'' => {
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => bail!("line {start}: a quoted string is never closed"),
                        Some(q) if q == c => break,
                        Some('\\') => word.extend(chars.next()),
                        Some(ch) => {
                            line += usize::from(ch == '\n');
                            word.push(ch);
                        }
                    }
                }
                out.push((Token::Word(word), start));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, ';' | '{' | '}' | '"' | '\'') && !word.ends_with('\\') {
                        break;
                    }
                    word.push(ch);
                    chars.next();
                }
                out.push((Token::Word(word), line));
            }
        }
    }
    Ok(out)
}

/// Reads a whole nginx configuration.
pub fn parse(text: &str) -> anyhow::Result<Vec<Directive>> {
    let tokens = tokens(text)?;
    let mut at = 0;
    let list = block(&tokens, &mut at)?;
    if let Some((_, line)) = tokens.get(at) {
        bail!("line {line}: `}}` closes no block");
    }
    Ok(list)
}

/// Directives up to the end of the tokens or a `}` (left for the caller).
fn block(tokens: &[(Token, usize)], at: &mut usize) -> anyhow::Result<Vec<Directive>> {
    let mut list = Vec::new();
    while let Some((token, line)) = tokens.get(*at) {
        let name = match token {
            Token::Close => break,
            Token::Word(w) => w.clone(),
            Token::Semicolon | Token::Open => bail!("line {line}: a directive name was expected"),
        };
        let line = *line;
        *at += 1;
        let mut args = Vec::new();
        loop {
            match tokens.get(*at) {
                Some((Token::Word(w), _)) => args.push(w.clone()),
                Some((Token::Semicolon, _)) => {
                    *at += 1;
                    list.push(Directive { name, args, line, block: None });
                    break;
                }
                Some((Token::Open, _)) => {
                    *at += 1;
                    let inner = block(tokens, at)?;
                    match tokens.get(*at) {
                        Some((Token::Close, _)) => *at += 1,
                        _ => bail!("line {line}: the block of `{name}` is never closed"),
                    }
                    list.push(Directive { name, args, line, block: Some(inner) });
                    break;
                }
                Some((Token::Close, _)) => bail!("line {line}: `{name}` needs a `;` before `}}`"),
                None => bail!("line {line}: `{name}` does not end (`;` or a block)"),
            }
            *at += 1;
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_blocks_quotes_comments_and_lines() {
        let text =
            "user nginx; # who\nhttp {\n  upstream a { server 10.0.0.1:80 weight=2; }\n  if ($http_app = \"app1\"){\n    proxy_pass http://app1;\n  }\n}\n";
        let d = parse(text).unwrap();
        assert_eq!((d[0].text(), d[0].line), ("user nginx".to_owned(), 1));
        let http = &d[1];
        assert_eq!((http.name.as_str(), http.line, http.children().len()), ("http", 2, 2));
        assert_eq!(http.children()[0].children()[0].text(), "server 10.0.0.1:80 weight=2");
        let cond = &http.children()[1];
        assert_eq!((cond.args.clone(), cond.line), (vec!["($http_app".to_owned(), "=".into(), "app1".into(), ")".into()], 4));
        assert_eq!((cond.children()[0].text(), cond.children()[0].line), ("proxy_pass http://app1".to_owned(), 5));
    }

    #[test]
    fn broken_files_say_where() {
        for (text, says) in [
            ("http {\n  server {\n", "line 2: the block of `server` is never closed"),
            ("a b\n", "line 1: `a` does not end"),
            ("a { b }\n", "line 1: `b` needs a `;`"),
            ("a;\n}\n", "line 2: `}` closes no block"),
            ("a \"b;\n", "line 1: a quoted string is never closed"),
            ("{ a; }", "line 1: a directive name was expected"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(says), "{text:?}: {e}");
        }
    }
}
