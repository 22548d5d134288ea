//! Message search through the gateway: `GET /v1/search?q=…&limit=` with queries of several
//! classes (a common word, a rare one, two words, a substring, a typo, one channel, …) read
//! from a file, in one run per concurrency. Every answer is checked: `200`, at most `limit`
//! hits, newest first (`created_at`, then id, decreasing), each in one of the user's
//! channels (the one the query names, if it names one), none deleted, none a system message.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, future, stream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::api::{Api, SearchPage};
use crate::stats::{Latency, Summary};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SearchArgs {
    /// User to search as (a dev token is fetched for it); its channels are listed with
    /// `GET /v1/channels` to check the hits.
    #[arg(long)]
    pub user: String,
    /// Queries, one per line: `class<TAB>query<TAB>channel_id` (the channel empty or left
    /// out: all the user's channels). Blank lines and lines starting with `#` are skipped.
    #[arg(long)]
    pub queries: PathBuf,
    /// Requests per run (at most 100000), round-robin over the classes; each takes a random
    /// query of its class.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Requests in flight: one run per value (comma-separated), in order.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// `limit` of each request (1-100).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Requests before the first run, not recorded (connections, caches).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// A run issues no new request after this many seconds (a slow server still gets a
    /// report: the requests made so far, still round-robin over the classes).
    #[arg(long, default_value_t = 600)]
    pub max_secs: u64,
    /// Seed of the query choice (the same seed and file give the same requests).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One line of the queries file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub class: String,
    pub text: String,
    pub channel: Option<String>,
}

/// Parses the queries file (see `--queries`).
pub fn parse_queries(text: &str) -> Result<Vec<Query>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split('\t');
        let class = f.next().unwrap_or_default().trim();
        let query = f.next().unwrap_or_default();
        let channel = f.next().unwrap_or_default().trim();
        if class.is_empty() || query.trim().is_empty() || f.next().is_some() {
            bail!(
                "line {}: expected class<TAB>query<TAB>channel_id, got {line:?}",
                n + 1
            );
        }
        out.push(Query {
            class: class.to_owned(),
            text: query.to_owned(),
            channel: (!channel.is_empty()).then(|| channel.to_owned()),
        });
    }
    Ok(out)
}

/// The classes in order of first appearance, each with its queries.
fn by_class(queries: Vec<Query>) -> Vec<(String, Vec<Query>)> {
    let mut out: Vec<(String, Vec<Query>)> = Vec::new();
    for q in queries {
        match out.iter_mut().find(|(c, _)| *c == q.class) {
            Some((_, v)) => v.push(q),
            None => out.push((q.class.clone(), vec![q])),
        }
    }
    out
}

/// What is wrong with a page, if anything: more than `limit` hits, not newest first, a hit
/// outside `mine` (or outside `only`), a deleted or system message.
pub fn check(
    page: &SearchPage,
    limit: u32,
    mine: &HashSet<String>,
    only: Option<&str>,
) -> Option<String> {
    if page.hits.len() > limit as usize {
        return Some(format!("{} hits > limit {limit}", page.hits.len()));
    }
    for (i, h) in page.hits.iter().enumerate() {
        if h.created_at.is_empty() || h.id.is_empty() {
            return Some(format!("hit {i} without created_at or id"));
        }
        if !mine.contains(&h.channel_id) {
            return Some(format!(
                "hit {i} in channel {:?}, not one of the user's",
                h.channel_id
            ));
        }
        if only.is_some_and(|c| c != h.channel_id) {
            return Some(format!(
                "hit {i} in channel {}, the query asked for {}",
                h.channel_id,
                only.unwrap_or_default()
            ));
        }
        if h.deleted || h.system {
            return Some(format!("hit {i} is a deleted or system message"));
        }
        if let Some(prev) = i.checked_sub(1).map(|p| &page.hits[p])
            && (prev.created_at.as_str(), prev.id.as_str())
                <= (h.created_at.as_str(), h.id.as_str())
        {
            return Some(format!(
                "hit {i} ({} {}) not older than hit {} ({} {})",
                h.created_at,
                h.id,
                i - 1,
                prev.created_at,
                prev.id
            ));
        }
    }
    None
}

#[derive(Debug, Serialize)]
pub struct ClassReport {
    pub class: String,
    /// Distinct queries of the class in the file.
    pub queries: usize,
    pub requests: u64,
    /// Answered `200` with a page that passed the checks.
    pub ok: u64,
    /// Not answered `200` (or not at all).
    pub errors: u64,
    /// Answered `200` with a page that failed the checks.
    pub wrong: u64,
    /// Mean hits per answered request.
    pub mean_hits: f64,
    /// Answers without a hit.
    pub zero_hits: u64,
    /// Answers saying a next page follows.
    pub with_next_page: u64,
    /// Every `200` answer (wrong pages included).
    pub latency: Summary,
    /// The slowest answers: their query and time (a query asked more than once appears once,
    /// with its slowest time).
    pub slowest: Vec<Slow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slow {
    pub query: String,
    pub channel: Option<String>,
    pub ms: f64,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub concurrency: usize,
    /// Requests made: `planned` unless `--max-secs` cut the run short.
    pub requests: u64,
    pub planned: u64,
    pub ok: u64,
    pub errors: u64,
    pub wrong: u64,
    pub secs: f64,
    pub requests_per_sec: f64,
    pub mean_hits: f64,
    pub latency: Summary,
    pub classes: Vec<ClassReport>,
    /// The first few errors and failed checks, with their query.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SearchReport {
    pub config: SearchArgs,
    /// The user's channels (from `GET /v1/channels`).
    pub user_channels: usize,
    pub warmup_errors: u64,
    pub runs: Vec<RunReport>,
}

impl SearchReport {
    pub fn ok(&self) -> bool {
        self.runs.iter().all(|r| r.errors == 0 && r.wrong == 0)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        for r in &self.runs {
            out.push_str(&format!(
                "search as {} ({} channels), limit {}, concurrency {}: {}{} ok, {} errors, {} wrong, {:.0} req/s\n{} {:>9}\n",
                self.config.user,
                self.user_channels,
                self.config.limit,
                r.concurrency,
                if r.requests < r.planned {
                    format!(
                        "{} of {} requests (stopped after {} s), ",
                        r.requests, r.planned, self.config.max_secs
                    )
                } else {
                    String::new()
                },
                r.ok,
                r.errors,
                r.wrong,
                r.requests_per_sec,
                Summary::header(),
                "mean hits"
            ));
            for c in &r.classes {
                out.push_str(&format!(
                    "{} {:>9.1}\n",
                    c.latency.row(&c.class),
                    c.mean_hits
                ));
            }
            out.push_str(&format!("{} {:>9.1}\n", r.latency.row("all"), r.mean_hits));
            for c in &r.classes {
                let slow: Vec<String> = c
                    .slowest
                    .iter()
                    .map(|s| format!("{:?} {:.1} ms", s.query, s.ms))
                    .collect();
                out.push_str(&format!("  slowest {}: {}\n", c.class, slow.join(", ")));
            }
            for p in &r.problems {
                out.push_str(&format!("  problem: {p}\n"));
            }
        }
        out
    }
}

/// What one request gave: its class, time, and the page (or why there is none / what is
/// wrong with it).
struct Outcome {
    class: usize,
    query: usize,
    ns: u64,
    page: Result<SearchPage>,
    problem: Option<String>,
}

struct Ctx<'a> {
    api: &'a Api,
    token: String,
    limit: u32,
    mine: HashSet<String>,
}

impl Ctx<'_> {
    async fn one(&self, class: usize, query: usize, q: &Query) -> Outcome {
        let t = Instant::now();
        let page = self
            .api
            .search(&self.token, &q.text, q.channel.as_deref(), self.limit)
            .await;
        let ns = t.elapsed().as_nanos() as u64;
        let problem = match &page {
            Ok(p) => check(p, self.limit, &self.mine, q.channel.as_deref()),
            Err(e) => Some(format!("{e:#}")),
        }
        .map(|p| format!("{} {:?}: {p}", q.class, q.text));
        Outcome {
            class,
            query,
            ns,
            page,
            problem,
        }
    }
}

/// Requests of a run: (class index, query index), round-robin over the classes.
fn plan(classes: &[(String, Vec<Query>)], n: usize, rng: &mut StdRng) -> Vec<(usize, usize)> {
    (0..n)
        .map(|i| {
            let c = i % classes.len();
            (c, rng.random_range(0..classes[c].1.len()))
        })
        .collect()
}

pub async fn run(api: &Api, a: SearchArgs) -> Result<SearchReport> {
    if a.requests == 0 || a.requests > 100_000 || a.warmup > 100_000 || a.max_secs == 0 {
        bail!("--requests must be 1-100000, --warmup at most 100000, --max-secs at least 1");
    }
    if !(1..=100).contains(&a.limit) {
        bail!("--limit must be 1-100");
    }
    if a.concurrency.is_empty() || a.concurrency.iter().any(|&c| c == 0 || c > 1000) {
        bail!("--concurrency must be 1-1000");
    }
    let text = std::fs::read_to_string(&a.queries)
        .with_context(|| format!("reading {}", a.queries.display()))?;
    let classes = by_class(parse_queries(&text)?);
    if classes.is_empty() {
        bail!("{}: no queries", a.queries.display());
    }
    let token = api.token(&a.user).await?;
    let mine: HashSet<String> = api.channel_ids(&token).await?.into_iter().collect();
    if mine.is_empty() {
        bail!("{} is a member of no channel", a.user);
    }
    for (_, qs) in &classes {
        for q in qs {
            if let Some(c) = q.channel.as_ref().filter(|c| !mine.contains(*c)) {
                bail!(
                    "query {:?} names channel {c}, not one of {}'s",
                    q.text,
                    a.user
                );
            }
        }
    }
    let ctx = Ctx {
        api,
        token,
        limit: a.limit,
        mine,
    };
    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut warmup_errors = 0;
    for (c, i) in plan(&classes, a.warmup, &mut rng) {
        if ctx.one(c, i, &classes[c].1[i]).await.problem.is_some() {
            warmup_errors += 1;
        }
    }
    let mut runs = Vec::new();
    for &concurrency in &a.concurrency {
        let requests = plan(&classes, a.requests, &mut rng);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(a.max_secs);
        let outcomes: Vec<Outcome> = stream::iter(requests)
            .take_while(|_| future::ready(Instant::now() < deadline))
            .map(|(c, i)| ctx.one(c, i, &classes[c].1[i]))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let secs = t0.elapsed().as_secs_f64();
        let mut run = summarize(&classes, concurrency, outcomes, secs);
        run.planned = a.requests as u64;
        runs.push(run);
    }
    Ok(SearchReport {
        user_channels: ctx.mine.len(),
        warmup_errors,
        runs,
        config: a,
    })
}

#[derive(Default)]
struct Tally {
    requests: u64,
    ok: u64,
    errors: u64,
    wrong: u64,
    hits: u64,
    zero_hits: u64,
    with_next_page: u64,
    latency: Latency,
    /// (ns, query index) of every `200` answer.
    times: Vec<(u64, usize)>,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.requests += 1;
        match &o.page {
            Err(_) => self.errors += 1,
            Ok(p) => {
                self.latency.record_ns(o.ns);
                self.times.push((o.ns, o.query));
                self.hits += p.hits.len() as u64;
                self.zero_hits += u64::from(p.hits.is_empty());
                self.with_next_page += u64::from(p.next_cursor);
                if o.problem.is_some() {
                    self.wrong += 1;
                } else {
                    self.ok += 1;
                }
            }
        }
    }

    /// The `n` slowest distinct queries of `qs`, slowest first.
    fn slowest(&self, qs: &[Query], n: usize) -> Vec<Slow> {
        let mut t = self.times.clone();
        t.sort_unstable_by(|a, b| b.cmp(a));
        let mut out: Vec<Slow> = Vec::new();
        let mut seen = HashSet::new();
        for (ns, i) in t {
            if out.len() == n {
                break;
            }
            if seen.insert(i) {
                out.push(Slow {
                    query: qs[i].text.clone(),
                    channel: qs[i].channel.clone(),
                    ms: ns as f64 / 1e6,
                });
            }
        }
        out
    }

    fn mean_hits(&self) -> f64 {
        let answered = self.ok + self.wrong;
        if answered == 0 {
            0.0
        } else {
            self.hits as f64 / answered as f64
        }
    }
}

fn summarize(
    classes: &[(String, Vec<Query>)],
    concurrency: usize,
    outcomes: Vec<Outcome>,
    secs: f64,
) -> RunReport {
    let mut per: Vec<Tally> = classes.iter().map(|_| Tally::default()).collect();
    let mut all = Tally::default();
    let mut problems = Vec::new();
    for o in &outcomes {
        per[o.class].add(o);
        all.add(o);
        if let Some(p) = &o.problem
            && problems.len() < 10
        {
            problems.push(p.clone());
        }
    }
    let class_reports = classes
        .iter()
        .zip(&per)
        .map(|((name, qs), t)| ClassReport {
            class: name.clone(),
            queries: qs.len(),
            requests: t.requests,
            ok: t.ok,
            errors: t.errors,
            wrong: t.wrong,
            mean_hits: t.mean_hits(),
            zero_hits: t.zero_hits,
            with_next_page: t.with_next_page,
            latency: t.latency.summary(),
            slowest: t.slowest(qs, 3),
        })
        .collect();
    RunReport {
        concurrency,
        requests: all.requests,
        planned: all.requests,
        ok: all.ok,
        errors: all.errors,
        wrong: all.wrong,
        secs,
        requests_per_sec: (all.ok + all.wrong) as f64 / secs.max(1e-9),
        mean_hits: all.mean_hits(),
        latency: all.latency.summary(),
        classes: class_reports,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SearchHit;

    fn hit(ch: &str, at: &str, id: &str) -> SearchHit {
        SearchHit {
            id: id.into(),
            channel_id: ch.into(),
            created_at: at.into(),
            deleted: false,
            system: false,
        }
    }

    #[test]
    fn queries_file_is_parsed() {
        let q = parse_queries("# comment\ncommon\tthe\t\n\ntwo-words\tfoo bar\nchannel\tthe\tc1\n")
            .expect("valid");
        assert_eq!(q.len(), 3);
        assert_eq!(q[1].text, "foo bar");
        assert_eq!(q[1].channel, None);
        assert_eq!(q[2].channel.as_deref(), Some("c1"));
        assert!(parse_queries("common\n").is_err());
        assert!(parse_queries("a\tb\tc\td\n").is_err());
        let classes = by_class(q);
        assert_eq!(
            classes.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
            ["common", "two-words", "channel"]
        );
    }

    #[test]
    fn pages_are_checked() {
        let mine: HashSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let t1 = "2026-01-01T00:00:01.000000Z";
        let t2 = "2026-01-01T00:00:02.000000Z";
        let page = |hits| SearchPage {
            hits,
            next_cursor: false,
        };
        let good = page(vec![
            hit("a", t2, "2"),
            hit("b", t2, "1"),
            hit("a", t1, "9"),
        ]);
        assert_eq!(check(&good, 20, &mine, None), None);
        assert!(check(&good, 2, &mine, None).is_some(), "over the limit");
        assert!(
            check(&good, 20, &mine, Some("a")).is_some(),
            "other channel"
        );
        let old_first = page(vec![hit("a", t1, "1"), hit("a", t2, "2")]);
        assert!(check(&old_first, 20, &mine, None).is_some());
        let tie_wrong = page(vec![hit("a", t2, "1"), hit("a", t2, "2")]);
        assert!(check(&tie_wrong, 20, &mine, None).is_some());
        let foreign = page(vec![hit("x", t2, "1")]);
        assert!(check(&foreign, 20, &mine, None).is_some());
        let mut deleted = hit("a", t2, "1");
        deleted.deleted = true;
        assert!(check(&page(vec![deleted]), 20, &mine, None).is_some());
        assert_eq!(check(&page(Vec::new()), 20, &mine, None), None);
    }

    #[test]
    fn slowest_queries_are_distinct_and_slowest_first() {
        let qs = parse_queries("x\ta\nx\tb\nx\tc\n").expect("valid");
        let mut t = Tally::default();
        for (ns, query) in [(5, 0), (9, 1), (7, 0), (1, 2)] {
            t.add(&Outcome {
                class: 0,
                query,
                ns: ns * 1_000_000,
                page: Ok(SearchPage::default()),
                problem: None,
            });
        }
        let s = t.slowest(&qs, 2);
        assert_eq!(
            s.iter()
                .map(|s| (s.query.as_str(), s.ms))
                .collect::<Vec<_>>(),
            [("b", 9.0), ("a", 7.0)]
        );
    }

    #[test]
    fn requests_go_round_robin_over_classes() {
        let classes = by_class(parse_queries("x\tq1\ny\tq2\ny\tq3\n").expect("valid"));
        let p = plan(&classes, 5, &mut StdRng::seed_from_u64(1));
        assert_eq!(
            p.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        assert!(p.iter().all(|&(c, i)| i < classes[c].1.len()));
    }
}
