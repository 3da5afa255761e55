//! Issue 16, item 6: the admin page as a person uses it, in headless
//! Chromium driven over the DevTools protocol (clicks at an element's
//! centre, typed text, screenshots): keys created, used and watched on
//! their 24-hour chart, filtered, edited, rotated and deleted; service
//! credentials. The admin key never reaches the page's DOM.
#![allow(unused_crate_dependencies)]

mod common;
use common::{Instance, instance};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(15);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Chromium's process: killed when dropped, whatever the test did.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab, over the DevTools protocol.
struct Page {
    ws: Socket,
    session: String,
    next_id: u64,
    /// The events kept: requests sent and uncaught exceptions.
    events: Vec<Value>,
    // Last: the socket closes before Chromium is killed.
    _browser: Browser,
}

impl Page {
    /// Starts Chromium headless and opens a tab.
    async fn launch() -> Self {
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("Chromium is missing: apt-get install chromium"));
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut browser = Browser { child, profile };
        // Chromium writes the port it chose, then the browser's path.
        let port_file = browser.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        let (port, path) = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                break (port.to_owned(), path.to_owned());
            }
            let exited = browser.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(browser.profile.path().join("chromium.log"));
                panic!(
                    "Chromium did not start ({exited:?}):\n{}",
                    log.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}")),
        )
        .await
        .expect("no DevTools connection within 15 s")
        .unwrap();
        let mut page = Self {
            ws,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
            _browser: browser,
        };
        let target = page
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await["targetId"]
            .clone();
        let attached = page
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Network.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }

    /// A command to the browser (`session` `None`) or to a tab: its result.
    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 15 s"))
                .unwrap_or_else(|| panic!("Chromium hung up during {method}"))
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} {params}: {v}");
                return v["result"].clone();
            }
            if matches!(
                v["method"].as_str(),
                Some("Network.requestWillBeSent" | "Runtime.exceptionThrown")
            ) {
                self.events.push(v);
            }
        }
    }

    /// A command to the tab.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params).await
    }

    /// The value of a JavaScript expression in the tab.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy: its value. Panics with the
    /// page's text after the deadline.
    async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.eval(expression).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let dom = self.eval("document.body.outerHTML").await;
                panic!(
                    "waited 15 s for {what} ({expression}); the page:\n{}",
                    dom.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for("the page", "document.readyState === 'complete'")
            .await;
    }

    /// A left click at the centre of the element, as a mouse would: the
    /// element must be the one there (not under a dialog).
    async fn click(&mut self, selector: &str) {
        let sel = json!(selector);
        let at = self
            .wait_for(
                &format!("{selector} to be clickable"),
                &format!(
                    "(() => {{ const e = document.querySelector({sel});
                    if (!e) return null;
                    e.scrollIntoView({{block: 'center', inline: 'center'}});
                    const r = e.getBoundingClientRect();
                    if (r.width === 0 || r.height === 0) return null;
                    const x = r.x + r.width / 2, y = r.y + r.height / 2;
                    return e.contains(document.elementFromPoint(x, y)) ? {{x, y}} : null; }})()"
                ),
            )
            .await;
        let (x, y) = (at["x"].clone(), at["y"].clone());
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        )
        .await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Clicks the `action` button of row `id` in table `table`.
    async fn row_button(&mut self, table: &str, id: &str, action: &str) {
        self.click(&format!(
            "#{table} tr[data-id=\"{id}\"] button[data-action={action}]"
        ))
        .await;
    }

    /// Opens `dialog` with the `action` button of key `id`'s row, as a
    /// person does, and waits until it shows.
    async fn open_dialog(&mut self, id: &str, action: &str, dialog: &str) {
        self.row_button("keys", id, action).await;
        self.wait_for(
            &format!("the {dialog}"),
            &format!("document.getElementById('{dialog}').open"),
        )
        .await;
    }

    /// Saves the edit dialog and waits until it closed and `expression`
    /// holds.
    async fn save_edit(&mut self, what: &str, expression: &str) {
        self.click("#edit-save").await;
        self.wait_for(
            what,
            &format!("!document.getElementById('edit-dialog').open && ({expression})"),
        )
        .await;
    }

    /// Clicks into a field, selects what it holds and types `text` over it.
    async fn fill(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        self.eval(&format!(
            "document.querySelector({}).select()",
            json!(selector)
        ))
        .await;
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Backspace", "code": "Backspace",
                    "windowsVirtualKeyCode": 8}),
            )
            .await;
        }
        if !text.is_empty() {
            self.call("Input.insertText", json!({ "text": text })).await;
        }
        let value = self
            .eval(&format!(
                "document.querySelector({}).value",
                json!(selector)
            ))
            .await;
        assert_eq!(value, text, "typing into {selector}");
    }

    /// The text of an element (`null` when there is none).
    async fn text(&mut self, selector: &str) -> Value {
        self.eval(&format!(
            "document.querySelector({})?.textContent ?? null",
            json!(selector)
        ))
        .await
    }

    /// How many refreshes the page has finished.
    async fn refreshes(&mut self) -> u64 {
        self.eval("Number(document.body.dataset.refreshes || 0)")
            .await
            .as_u64()
            .unwrap()
    }

    /// Waits for a refresh after `before`.
    async fn refreshed(&mut self, before: u64) {
        self.wait_for(
            "a refresh",
            &format!("Number(document.body.dataset.refreshes || 0) > {before}"),
        )
        .await;
    }

    /// Asserts that `secret` is nowhere in the page: markup, fields' values,
    /// address.
    async fn never_shows(&mut self, secret: &str, what: &str) {
        let all = self
            .eval(
                "document.documentElement.outerHTML + ' ' + location.href + ' ' +
                [...document.querySelectorAll('input')].map((i) => i.value).join(' ')",
            )
            .await;
        assert!(
            !all.as_str().unwrap().contains(secret),
            "the page shows {what}"
        );
    }

    /// A PNG of the viewport, written to `dir/name.png` (and to
    /// `$AUTH_TEST_SCREENSHOTS` when set, to look at).
    async fn screenshot(&mut self, dir: &Path, name: &str) -> PathBuf {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64(shot["data"].as_str().unwrap());
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{name}: no real screenshot ({} bytes)",
            png.len()
        );
        // IHDR: width and height, big-endian, after the signature and header.
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert!(width >= 800 && height >= 600, "{name}: {width}×{height}");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        if let Some(keep) = std::env::var_os("AUTH_TEST_SCREENSHOTS") {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::write(Path::new(&keep).join(format!("{name}.png")), &png).unwrap();
        }
        path
    }

    /// The URLs of the requests the page sent.
    fn requests(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Standard base64 (the screenshots).
fn base64(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hour() -> u64 {
    now() / 3600 * 3600
}

/// A validation by the service with `token`: the answer's code.
async fn validate(server: &Instance, token: &str, key: &str) -> String {
    let answer: Value = reqwest::Client::new()
        .post(format!("http://{}/api/v1/api-keys/validate", server.api))
        .header(auth_server::SERVICE_HEADER, token)
        .json(&json!({"apiKey": key, "scope": "stt"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["code"].as_str().unwrap().to_owned()
}

/// What a key's chart shows for one hour: the bar's total and each
/// segment's code and count (`null`: no such bar).
async fn bar(page: &mut Page, id: &str, hour: u64) -> Value {
    page.eval(&format!(
        "(() => {{ const bar = document.querySelector(
            `#keys tr[data-id={id}] svg.chart g.bar[data-hour='{hour}']`);
        if (!bar) return null;
        const segments = {{}};
        for (const s of bar.querySelectorAll('rect.seg')) {{
            segments[s.getAttribute('data-code')] = Number(s.getAttribute('data-count'));
            if (!s.querySelector('title')?.textContent) return 'a segment without a title';
        }}
        return {{ total: Number(bar.getAttribute('data-total')), segments }}; }})()",
        id = json!(id)
    ))
    .await
}

/// The sum of a key's 24 bars.
async fn chart_total(page: &mut Page, id: &str) -> u64 {
    let v = page
        .eval(&format!(
            "[...document.querySelectorAll(`#keys tr[data-id={}] g.bar`)]
                .reduce((sum, b) => sum + Number(b.getAttribute('data-total')), 0)",
            json!(id)
        ))
        .await;
    v.as_u64().unwrap()
}

/// The text of a key's or credential's cell (`td.c-…`).
async fn cell(page: &mut Page, table: &str, id: &str, column: &str) -> String {
    let v = page
        .text(&format!("#{table} tr[data-id=\"{id}\"] td.c-{column}"))
        .await;
    v.as_str()
        .unwrap_or_else(|| panic!("no {column} cell for {id}"))
        .to_owned()
}

/// Waits for a row's state.
async fn wait_state(page: &mut Page, table: &str, id: &str, state: &str) {
    page.wait_for(
        &format!("{id} to be {state}"),
        &format!(
            "document.querySelector('#{table} tr[data-id=\"{id}\"]')?.dataset.state === '{state}'"
        ),
    )
    .await;
}

/// Waits for a new key or credential in the "shown once" box `box_id`
/// (other than `not`): its id and the secret.
async fn shown_once(page: &mut Page, box_id: &str, not: &[&str]) -> (String, String) {
    let id = page
        .wait_for(
            &format!("a new one in #{box_id}"),
            &format!(
                "(() => {{ const b = document.getElementById('{box_id}');
                const id = b.dataset.id;
                return !b.hidden && id && !{not}.includes(id) ? id : null; }})()",
                not = json!(not)
            ),
        )
        .await;
    let secret = page.text(&format!("#{box_id}-value")).await;
    (
        id.as_str().unwrap().to_owned(),
        secret.as_str().unwrap().to_owned(),
    )
}

/// Deletes a row through its Delete button and the confirmation in the row.
async fn delete_row(page: &mut Page, server: &Instance, table: &str, id: &str, path: &str) {
    let row = format!("#{table} tr[data-id=\"{id}\"]");
    page.row_button(table, id, "delete").await;
    // Asked first: nothing deleted yet; Cancel puts the Delete button back.
    page.wait_for(
        "the confirmation",
        &format!("document.querySelector('{row} button[data-action=confirm-delete]')"),
    )
    .await;
    assert_eq!(server.call("GET", path, None).await.0, 200);
    page.row_button(table, id, "cancel-delete").await;
    page.row_button(table, id, "delete").await;
    page.row_button(table, id, "confirm-delete").await;
    page.wait_for(
        &format!("{id}'s row to go"),
        &format!("!document.querySelector('{row}')"),
    )
    .await;
    let (status, answer) = server.call("GET", path, None).await;
    assert_eq!(status, 404, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_keys_and_credentials_from_the_admin_page() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let shots = tempfile::tempdir().unwrap();
    let server = instance(dir.path(), None, auth_server::Options::default()).await;
    let admin = server.admin.clone();
    let base = format!("http://{}", server.api);
    let mut page = Page::launch().await;

    // The admin key travels in the fragment, which is never sent to the
    // server, and leaves the address at once.
    page.navigate(&format!("{base}/admin#key={admin}")).await;
    page.wait_for("the first refresh", "document.body.dataset.refreshes")
        .await;
    // Under its Content-Security-Policy (the page ran: its script and
    // style are the ones allowed); anything it refuses from now on is
    // counted.
    let policy = reqwest::get(format!("{base}/admin")).await.unwrap();
    let csp = policy.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    page.eval(
        "window.refused = []; document.addEventListener('securitypolicyviolation', \
         (e) => window.refused.push(e.violatedDirective)); true",
    )
    .await;
    assert_eq!(page.eval("location.href").await, format!("{base}/admin"));
    page.never_shows(&admin, "the admin key").await;

    // A service credential, shown once: the service validates with it.
    page.fill("#service-name", "billing-api").await;
    page.click("#create-service button[type=submit]").await;
    let (billing, token) = shown_once(&mut page, "new-service", &[]).await;
    assert!(token.starts_with("sk_svc_"), "{token}");
    wait_state(&mut page, "services", &billing, "active").await;
    assert_eq!(
        cell(&mut page, "services", &billing, "name").await,
        "billing-api"
    );

    // Two keys, each shown once; the second replaces the first on screen.
    page.fill("#owner", "svc-page-a").await;
    page.fill("#scopes", "stt").await;
    page.click("#create button[type=submit]").await;
    let (a, key_a) = shown_once(&mut page, "new-key", &[]).await;
    assert!(key_a.starts_with("sk_live_"), "{key_a}");
    wait_state(&mut page, "keys", &a, "active").await;
    page.fill("#owner", "svc-page-b").await;
    page.fill("#scopes", "stt").await;
    page.click("#create button[type=submit]").await;
    let (b, key_b) = shown_once(&mut page, "new-key", &[&a]).await;
    page.never_shows(&key_a, "a key no longer new").await;
    page.click("#copy").await;
    page.wait_for(
        "the copy's answer",
        "/Copied|copy it by hand/.test(document.getElementById('status').textContent)",
    )
    .await;

    // The second is disabled from its row.
    page.row_button("keys", &b, "disable").await;
    wait_state(&mut page, "keys", &b, "disabled").await;
    assert_eq!(cell(&mut page, "keys", &a, "state").await, "active");
    assert_eq!(cell(&mut page, "keys", &a, "owner").await, "svc-page-a");
    assert_eq!(cell(&mut page, "keys", &b, "owner").await, "svc-page-b");
    assert_eq!(cell(&mut page, "keys", &a, "credits").await, "—");
    assert_eq!(cell(&mut page, "keys", &a, "scopes").await, "stt");
    let created = page
        .eval(&format!(
            "document.querySelector('#keys tr[data-id=\"{a}\"] td.c-created time').dateTime"
        ))
        .await;
    assert!(
        created.as_str().unwrap().ends_with('Z'),
        "created: {created}"
    );
    page.screenshot(shots.path(), "1-keys").await;

    // Used: 7 times, and 2 refusals for the disabled key.
    let hour_before = hour();
    for _ in 0..7 {
        assert_eq!(validate(&server, &token, &key_a).await, "valid");
    }
    for _ in 0..2 {
        assert_eq!(validate(&server, &token, &key_b).await, "disabled");
    }
    let hour_after = hour();
    let before = page.refreshes().await;
    page.click("#refresh").await;
    page.refreshed(before).await;
    if hour_before == hour_after {
        assert_eq!(
            bar(&mut page, &a, hour_after).await,
            json!({"total": 7, "segments": {"valid": 7}})
        );
        assert_eq!(
            bar(&mut page, &b, hour_after).await,
            json!({"total": 2, "segments": {"disabled": 2}})
        );
    }
    // Whatever the hour did meanwhile.
    assert_eq!(chart_total(&mut page, &a).await, 7);
    assert_eq!(chart_total(&mut page, &b).await, 2);
    let bars = page
        .eval(&format!(
            "document.querySelectorAll('#keys tr[data-id=\"{a}\"] g.bar').length"
        ))
        .await;
    assert_eq!(bars, 24);
    assert_eq!(
        page.eval("document.querySelectorAll('#legend [data-code]').length")
            .await,
        6
    );
    page.screenshot(shots.path(), "2-chart").await;

    // Filtered by owner: the table, and the usage asked for that owner.
    let before = page.refreshes().await;
    page.fill("#owner-filter", "svc-page-a").await;
    page.refreshed(before).await;
    page.wait_for(
        "the filter",
        &format!(
            "!document.querySelector('#keys tr[data-id=\"{b}\"]') &&
            document.querySelector('#keys tr[data-id=\"{a}\"]')"
        ),
    )
    .await;
    let asked = page.requests();
    assert!(
        asked
            .iter()
            .any(|u| u.contains("/api/v1/usage?") && u.contains("owner=svc-page-a")),
        "{asked:?}"
    );
    assert_eq!(chart_total(&mut page, &a).await, 7);
    page.fill("#owner-filter", "").await;
    page.wait_for(
        "every row back",
        &format!("document.querySelector('#keys tr[data-id=\"{b}\"]')"),
    )
    .await;

    // Edited: a refused value shows the server's message, in the dialog.
    page.open_dialog(&a, "edit", "edit-dialog").await;
    assert_eq!(
        page.eval("document.getElementById('edit-scopes').value")
            .await,
        "stt"
    );
    page.fill("#edit-rate-requests", "0").await;
    page.fill("#edit-rate-window", "60").await;
    page.click("#edit-save").await;
    let refused = page
        .wait_for(
            "the server's message",
            "document.getElementById('edit-error').textContent",
        )
        .await;
    assert!(
        refused.as_str().unwrap().contains("rateLimit needs"),
        "{refused}"
    );
    // Still open, for the person to fix the value.
    assert_eq!(
        page.eval("document.getElementById('edit-dialog').open")
            .await,
        json!(true)
    );
    page.screenshot(shots.path(), "3-edit-refused").await;
    page.fill("#edit-scopes", "stt tts").await;
    page.fill("#edit-rate-requests", "100").await;
    page.fill("#edit-credits-remaining", "120").await;
    page.fill("#edit-refill-amount", "1000").await;
    page.fill("#edit-refill-every", "1d").await;
    page.fill("#edit-expires", "2099-12-31 23:59").await;
    page.save_edit(
        "the edited row",
        &format!(
            "document.querySelector('#keys tr[data-id=\"{a}\"] td.c-credits')?.textContent
                === '120 / refill 1000 every 1d'"
        ),
    )
    .await;
    assert_eq!(cell(&mut page, "keys", &a, "scopes").await, "stt tts");
    assert_eq!(cell(&mut page, "keys", &a, "rate").await, "100 / 1m");
    assert_eq!(
        page.eval(&format!(
            "document.querySelector('#keys tr[data-id=\"{a}\"] td.c-expires time').dateTime"
        ))
        .await,
        "2099-12-31T23:59:00Z"
    );
    let (_, saved) = server.call("GET", &format!("/api/v1/keys/{a}"), None).await;
    assert_eq!(saved["scopes"], json!(["stt", "tts"]));
    assert_eq!(saved["rateLimit"], json!({"requests": 100, "window": 60}));
    assert_eq!(saved["credits"]["remaining"], 120);
    assert_eq!(
        saved["credits"]["refill"],
        json!({"amount": 1000, "every": 86400})
    );
    assert_eq!(saved["expiresAt"], 4_102_444_740u64);

    // Only what changed is sent: emptied rate limit fields remove it
    // (`null`), and the credits spent meanwhile are not reset.
    assert_eq!(validate(&server, &token, &key_a).await, "valid");
    page.open_dialog(&a, "edit", "edit-dialog").await;
    page.fill("#edit-rate-requests", "").await;
    page.fill("#edit-rate-window", "").await;
    page.save_edit(
        "no rate limit",
        &format!(
            "document.querySelector('#keys tr[data-id=\"{a}\"] td.c-rate')?.textContent === '—'"
        ),
    )
    .await;
    let (_, saved) = server.call("GET", &format!("/api/v1/keys/{a}"), None).await;
    assert!(saved["rateLimit"].is_null(), "{saved}");
    assert_eq!(saved["credits"]["remaining"], 119);
    assert_eq!(saved["scopes"], json!(["stt", "tts"]));

    // A new refill alone keeps what remains now — not the 119 the dialog
    // read before one more credit was spent.
    page.open_dialog(&a, "edit", "edit-dialog").await;
    assert_eq!(validate(&server, &token, &key_a).await, "valid");
    page.fill("#edit-refill-every", "12h").await;
    page.save_edit(
        "the new refill",
        &format!(
            "document.querySelector('#keys tr[data-id=\"{a}\"] td.c-credits')?.textContent
                === '118 / refill 1000 every 12h'"
        ),
    )
    .await;
    let (_, saved) = server.call("GET", &format!("/api/v1/keys/{a}"), None).await;
    assert_eq!(saved["credits"]["remaining"], 118, "{saved}");
    assert_eq!(saved["credits"]["refill"]["every"], 43_200);

    // The audit trail: a key's History fills the filter, and the page's
    // own writes are there, each once, by this admin key (the refused
    // edit left none).
    let actor = format!(
        "admin:{}",
        auth_core::Digest::of(admin.as_bytes()).fingerprint()
    );
    for (id, expected) in [
        (&a, json!(["update", "update", "update", "create"])),
        (&b, json!(["disable", "create"])),
    ] {
        page.row_button("keys", id, "history").await;
        let actions = page
            .wait_for(
                &format!("{id}'s history"),
                &format!(
                    "(() => {{ const rows = [...document.querySelectorAll('#audit tbody tr')];
                    if (!rows.length || rows.some((r) => r.dataset.key !== {id})) return null;
                    if (rows.some((r) => r.dataset.actor !== {actor})) return 'another actor';
                    return rows.map((r) => r.dataset.action); }})()",
                    id = json!(id),
                    actor = json!(actor)
                ),
            )
            .await;
        assert_eq!(actions, expected, "{id}");
        assert_eq!(
            page.eval("document.getElementById('audit-key').value")
                .await,
            json!(id)
        );
    }
    let disabled = page
        .eval(
            "document.querySelectorAll('#audit tbody tr').length === 2 &&
            document.querySelector('#audit tbody tr:first-child td.c-changes').textContent",
        )
        .await;
    assert!(
        disabled
            .as_str()
            .unwrap()
            .starts_with("disabledAt: none → "),
        "{disabled}"
    );
    page.row_button("keys", &a, "history").await;
    let changes = page
        .wait_for(
            "the first edit's changes",
            &format!(
                "(() => {{ const rows = [...document.querySelectorAll('#audit tbody tr')];
                return rows.length === 4 && rows[0].dataset.key === {a}
                    ? rows[2].querySelector('td.c-changes').textContent : null; }})()",
                a = json!(a)
            ),
        )
        .await;
    assert!(
        changes
            .as_str()
            .unwrap()
            .contains(r#"scopes: ["stt"] → ["stt","tts"]"#),
        "{changes}"
    );
    page.screenshot(shots.path(), "3b-audit-trail").await;
    let before = page.refreshes().await;
    page.fill("#audit-key", "").await;
    page.refreshed(before).await;

    // Rotated: the new key shown once, and until when the old one works.
    page.open_dialog(&a, "rotate", "rotate-dialog").await;
    assert_eq!(
        page.eval("document.getElementById('rotate-overlap').value")
            .await,
        "3600"
    );
    let rotated_at = now();
    page.click("#rotate-confirm").await;
    let (a2, key_a2) = shown_once(&mut page, "new-key", &[&a, &b]).await;
    assert!(key_a2.starts_with("sk_live_") && key_a2 != key_a && key_a2 != key_b);
    let until = page
        .wait_for(
            "the old key's end",
            "document.getElementById('new-key-note').dataset.until",
        )
        .await;
    let until: u64 = until.as_str().unwrap().parse().unwrap();
    assert!(
        (rotated_at + 3600..=now() + 3600).contains(&until),
        "{until}"
    );
    let (_, old) = server.call("GET", &format!("/api/v1/keys/{a}"), None).await;
    assert_eq!(old["expiresAt"], until);
    let shown_until = page
        .eval("document.querySelector('#new-key-note time').dateTime")
        .await;
    wait_state(&mut page, "keys", &a2, "active").await;
    assert_eq!(
        page.eval(&format!(
            "document.querySelector('#keys tr[data-id=\"{a}\"] td.c-expires time').dateTime"
        ))
        .await,
        shown_until
    );
    assert_eq!(cell(&mut page, "keys", &a2, "scopes").await, "stt tts");
    // Its credits moved to the new key, which works.
    assert_eq!(cell(&mut page, "keys", &a, "credits").await, "0");
    assert_eq!(validate(&server, &token, &key_a2).await, "valid");
    page.screenshot(shots.path(), "4-rotated").await;

    // Deleted, after the confirmation in the row.
    delete_row(&mut page, &server, "keys", &b, &format!("/api/v1/keys/{b}")).await;

    // Service credentials: another one, rotated, the old one deleted, the
    // new one disabled; the first is untouched.
    page.fill("#service-name", "reports").await;
    page.click("#create-service button[type=submit]").await;
    let (reports, reports_token) = shown_once(&mut page, "new-service", &[&billing]).await;
    wait_state(&mut page, "services", &reports, "active").await;
    page.row_button("services", &reports, "rotate").await;
    page.wait_for(
        "the rotate dialog",
        "document.getElementById('rotate-dialog').open",
    )
    .await;
    page.fill("#rotate-overlap", "60").await;
    page.click("#rotate-confirm").await;
    let (reports2, reports2_token) =
        shown_once(&mut page, "new-service", &[&billing, &reports]).await;
    assert_ne!(reports_token, reports2_token);
    let until = page
        .wait_for(
            "the old credential's end",
            "document.getElementById('new-service-note').dataset.until",
        )
        .await;
    let until: u64 = until.as_str().unwrap().parse().unwrap();
    assert!((rotated_at + 60..=now() + 60).contains(&until), "{until}");
    // The new row is in (above the old one) before the old one's buttons
    // are clicked: a row arriving mid-click would take the click.
    wait_state(&mut page, "services", &reports2, "active").await;
    delete_row(
        &mut page,
        &server,
        "services",
        &reports,
        &format!("/api/v1/services/{reports}"),
    )
    .await;
    page.row_button("services", &reports2, "disable").await;
    wait_state(&mut page, "services", &reports2, "disabled").await;
    wait_state(&mut page, "services", &billing, "active").await;
    let (_, listed) = server.call("GET", "/api/v1/services", None).await;
    assert_eq!(listed["services"].as_array().unwrap().len(), 2, "{listed}");
    page.screenshot(shots.path(), "5-services").await;

    // Every API call went well, and nothing the page did was refused by
    // its policy (an injected script would be).
    assert_eq!(
        page.eval("document.getElementById('status').className")
            .await,
        "ok"
    );
    assert_eq!(page.eval("window.refused").await, json!([]));
    page.eval(
        "(() => { const s = document.createElement('script'); \
         s.textContent = 'window.injected = true'; document.body.append(s); })()",
    )
    .await;
    page.wait_for("the refusal of an injected script", "window.refused.length")
        .await;
    assert_eq!(
        page.eval("window.injected === undefined").await,
        json!(true)
    );

    // The admin key from the form: a wrong one is said so, and the page
    // forgets what it showed; the right one brings the tables back.
    page.click("#forget").await;
    page.wait_for(
        "an empty table",
        "!document.querySelector('#keys tbody tr') && document.getElementById('new-key').hidden",
    )
    .await;
    page.fill("#admin-key", "not-the-admin-key").await;
    page.click("#login button[type=submit]").await;
    page.wait_for(
        "the refusal",
        "document.getElementById('status').textContent.includes('not accepted')",
    )
    .await;
    let before = page.refreshes().await;
    page.fill("#admin-key", &admin).await;
    page.click("#login button[type=submit]").await;
    page.refreshed(before).await;
    wait_state(&mut page, "keys", &a2, "active").await;
    wait_state(&mut page, "services", &billing, "active").await;
    assert_eq!(
        page.eval("document.getElementById('admin-key').value")
            .await,
        ""
    );

    // No script error; no secret left in the page.
    let exceptions: Vec<_> = page
        .events
        .iter()
        .filter(|e| e["method"] == "Runtime.exceptionThrown")
        .collect();
    assert!(exceptions.is_empty(), "{exceptions:?}");
    page.never_shows(&admin, "the admin key").await;
    for (old, what) in [
        (&key_a, "the rotated key"),
        (&key_b, "the deleted key"),
        (&token, "a credential no longer new"),
        (&reports_token, "the rotated credential"),
        (&key_a2, "a new key after Forget"),
        (&reports2_token, "a new credential after Forget"),
    ] {
        page.never_shows(old, what).await;
    }
    eprintln!(
        "the admin page scenario took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
