/* render.c — the run report from a snapshot: the charts (flagged rate per batch, constitutions found,
 * training loss per round, every evaluation before and after), report.md, report.html (everything
 * inline, opens offline) and the files written by `iteralign report`. */
#include "report/report.h"
#include "report/svg.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#define TEXT_CUT 400

/* ---- snapshot access ----------------------------------------------------------------------- */

static json_t *arr(const json_t *o, const char *k) {
    json_t *a = json_object_get(o, k);
    return json_is_array(a) ? a : NULL;
}
static double num(const json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}
static long inum(const json_t *o, const char *k, long def) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (long)json_integer_value(v) : json_is_real(v) ? (long)json_real_value(v) : def;
}
static const char *str(const json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* Distinct evaluation metric names in first-seen order. */
static int eval_names(const json_t *snap, const char ***out) {
    json_t *ev = arr(snap, "evals");
    int n = 0;
    *out = ia_calloc(json_array_size(ev) + 1, sizeof(char *));
    if (!*out) return 0;
    size_t i;
    json_t *o;
    json_array_foreach(ev, i, o) {
        const char *nm = str(o, "name");
        bool seen = false;
        for (int k = 0; k < n && !seen; k++) seen = !strcmp((*out)[k], nm);
        if (!seen && *nm) (*out)[n++] = nm;
    }
    return n;
}

static long max_round(const json_t *snap) {
    long r = 0;
    size_t i;
    json_t *o;
    json_array_foreach(arr(snap, "rounds"), i, o)
        if (inum(o, "round", 0) > r) r = inum(o, "round", 0);
    json_array_foreach(arr(snap, "evals"), i, o)
        if (!strcmp(str(o, "phase"), "after") && inum(o, "batch", -1) > r) r = inum(o, "batch", -1);
    return r;
}

/* Where an evaluation sits on the before/after axis: before = 0, after round r = r, after the
 * whole run (batch -1) = the last round. */
static double eval_x(const json_t *o, long last) {
    if (!strcmp(str(o, "phase"), "before")) return 0;
    long b = inum(o, "batch", -1);
    return b >= 1 ? (double)b : (double)(last > 0 ? last : 1);
}

static void eval_label(const json_t *o, long last, char *out, size_t cap) {
    if (!strcmp(str(o, "phase"), "before")) snprintf(out, cap, "before");
    else if (inum(o, "batch", -1) >= 1) snprintf(out, cap, "after round %ld", inum(o, "batch", -1));
    else snprintf(out, cap, "after (round %ld)", last > 0 ? last : 1);
}

/* ---- charts -------------------------------------------------------------------------------- */

int ia_report_chart_names(const json_t *snap, char ***names) {
    int n = 0;
    const char **ev = NULL;
    int ne = eval_names(snap, &ev);
    *names = ia_calloc((size_t)ne + 4, sizeof(char *));
    if (!*names) { ia_free(ev); return 0; }
    if (json_array_size(arr(snap, "batches"))) (*names)[n++] = ia_strdup("flag_rate");
    if (json_array_size(arr(snap, "constitutions"))) (*names)[n++] = ia_strdup("constitutions");
    if (json_array_size(arr(snap, "rounds"))) (*names)[n++] = ia_strdup("loss");
    for (int i = 0; i < ne; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "eval-%d", i);
        (*names)[n++] = ia_strdup(nm);
    }
    ia_free(ev);
    return n;
}

static char *chart_flag_rate(const json_t *snap) {
    json_t *bs = arr(snap, "batches");
    int n = (int)json_array_size(bs);
    double *x = ia_malloc(sizeof(double) * (size_t)(n + 1) * 3), *y = x + n + 1, *pr = y + n + 1;
    const char **cols = ia_calloc((size_t)n + 1, sizeof(char *));
    if (!x || !cols) { ia_free(x); ia_free(cols); return NULL; }
    bool any_pass = false;
    for (int i = 0; i < n; i++) {
        json_t *o = json_array_get(bs, (size_t)i);
        x[i] = (double)inum(o, "batch", i) + 1;
        y[i] = num(o, "flag_rate");
        cols[i] = inum(o, "trained_round", 0) > 0 ? "#d62728" : "#f2a39f";
        pr[i] = NAN;
        size_t k;
        json_t *m;
        json_array_foreach(arr(snap, "loop_metrics"), k, m)
            if (!strcmp(str(m, "name"), "revision_pass_rate") && inum(m, "batch", -2) == inum(o, "batch", -1)) {
                pr[i] = num(m, "value");
                any_pass = true;
            }
    }
    svg_series s[2] = {{"flagged answers (pale: no round trained)", "#d62728", cols, n, x, y, true, false},
                       {"revisions that pass the judge", "#1f77b4", NULL, n, x, pr, false, true}};
    svg_chart_opts o = {0};
    o.title = "Flagged answers per batch";
    o.xlabel = "batch";
    o.y_percent = true;
    o.y_from_zero = true;
    o.y_max_at_least = 0.1;
    o.legend = true;
    o.width = 720;
    ia_buf b = {0};
    svg_chart(&b, &o, s, any_pass ? 2 : 1);
    ia_free(x);
    ia_free(cols);
    return ia_buf_take(&b);
}

static char *chart_constitutions(const json_t *snap) {
    json_t *bs = arr(snap, "batches"), *cs = arr(snap, "constitutions");
    int n = (int)json_array_size(bs);
    if (n == 0) {
        /* no batch table: one point per first batch seen */
        size_t i;
        json_t *c;
        json_array_foreach(cs, i, c)
            if (inum(c, "first_batch", 0) + 1 > n) n = (int)inum(c, "first_batch", 0) + 1;
    }
    double *x = ia_malloc(sizeof(double) * (size_t)(n + 1) * 2), *y = x + n + 1;
    if (!x) return NULL;
    for (int b = 0; b < n; b++) {
        int cnt = 0;
        size_t i;
        json_t *c;
        json_array_foreach(cs, i, c)
            if (inum(c, "first_batch", 0) <= b && !json_is_integer(json_object_get(c, "merged_into"))) cnt++;
        x[b] = b + 1;
        y[b] = cnt;
    }
    svg_series s = {"constitutions in the registry", "#2ca02c", NULL, n, x, y, false, false};
    svg_chart_opts o = {0};
    o.title = "Constitutions found (cumulative, near-duplicates merged)";
    o.xlabel = "batch";
    o.y_from_zero = true;
    o.y_max_at_least = 1;
    o.y_integer = true;
    o.width = 720;
    o.height = 240;
    ia_buf b = {0};
    svg_chart(&b, &o, &s, 1);
    ia_free(x);
    return ia_buf_take(&b);
}

static char *chart_loss(const json_t *snap) {
    json_t *rs = arr(snap, "rounds");
    int nr = (int)json_array_size(rs), total = 0;
    size_t i;
    json_t *r;
    json_array_foreach(rs, i, r) total += (int)json_array_size(arr(r, "losses"));
    ia_buf b = {0};
    svg_chart_opts o = {0};
    o.title = "Training loss per round";
    o.ylabel = "loss";
    o.y_from_zero = true;
    o.width = 720;
    if (total > 0) {
        /* every optimizer step, rounds one after another, a colour per round */
        double *x = ia_malloc(sizeof(double) * (size_t)total * 2), *y = x + total;
        svg_series *s = ia_calloc((size_t)nr, sizeof *s);
        char (*names)[32] = ia_calloc((size_t)nr, 32);
        if (!x || !s || !names) { ia_free(x); ia_free(s); ia_free(names); return NULL; }
        int k = 0, ns = 0;
        json_array_foreach(rs, i, r) {
            json_t *ls = arr(r, "losses");
            if (!json_array_size(ls)) continue;
            snprintf(names[ns], 32, "round %ld", inum(r, "round", (long)i + 1));
            s[ns] = (svg_series){names[ns], svg_color(ns), NULL, 0, x + k, y + k, false, false};
            size_t j;
            json_t *l;
            json_array_foreach(ls, j, l) {
                x[k] = k + 1;
                y[k] = num(l, "loss");
                k++;
                s[ns].n++;
            }
            ns++;
        }
        o.xlabel = "optimizer step (rounds in order)";
        o.legend = true;
        svg_chart(&b, &o, s, ns);
        ia_free(x);
        ia_free(s);
        ia_free(names);
    } else {
        double *x = ia_malloc(sizeof(double) * (size_t)(nr + 1) * 3), *y0 = x + nr + 1, *y1 = y0 + nr + 1;
        if (!x) return NULL;
        json_array_foreach(rs, i, r) {
            x[i] = (double)inum(r, "round", (long)i + 1);
            y0[i] = num(r, "first_loss");
            y1[i] = num(r, "final_loss");
        }
        svg_series s[2] = {{"first step", "#ff7f0e", NULL, nr, x, y0, true, false},
                           {"last step", "#1f77b4", NULL, nr, x, y1, true, false}};
        o.xlabel = "round";
        svg_chart(&b, &o, s, 2);
        ia_free(x);
    }
    return ia_buf_take(&b);
}

static char *chart_eval(const json_t *snap, int which) {
    const char **names = NULL;
    int ne = eval_names(snap, &names);
    if (which < 0 || which >= ne) { ia_free(names); return NULL; }
    const char *nm = names[which];
    json_t *ev = arr(snap, "evals");
    long last = max_round(snap);
    int n = 0;
    double *x = ia_malloc(sizeof(double) * (json_array_size(ev) + 1) * 2), *y = x + json_array_size(ev) + 1;
    double *tx = ia_malloc(sizeof(double) * (size_t)(last + 2));
    char (*lab)[32] = ia_calloc((size_t)last + 2, 32);
    const char **labp = ia_calloc((size_t)last + 2, sizeof(char *));
    if (!x || !tx || !lab || !labp) { ia_free(x); ia_free(tx); ia_free(lab); ia_free(labp); ia_free(names); return NULL; }
    size_t i;
    json_t *o;
    bool rate = true;
    json_array_foreach(ev, i, o) {
        if (strcmp(str(o, "name"), nm)) continue;
        x[n] = eval_x(o, last);
        y[n] = num(o, "value");
        if (!(y[n] >= 0 && y[n] <= 1)) rate = false;
        n++;
    }
    /* points in axis order (a run records before first, but a snapshot need not) */
    for (int a = 1; a < n; a++)
        for (int c = a; c > 0 && x[c - 1] > x[c]; c--) {
            double t = x[c]; x[c] = x[c - 1]; x[c - 1] = t;
            t = y[c]; y[c] = y[c - 1]; y[c - 1] = t;
        }
    int nt = 0;
    for (long r = 0; r <= (last > 0 ? last : 1); r++) {
        tx[nt] = (double)r;
        if (r == 0) snprintf(lab[nt], 32, "before");
        else snprintf(lab[nt], 32, "%ld", r);
        labp[nt] = lab[nt];
        nt++;
    }
    char title[160];
    snprintf(title, sizeof title, "%s before and after", nm);
    svg_series s = {nm, svg_color(which + 1), NULL, n, x, y, false, false};
    svg_chart_opts co = {0};
    co.title = title;
    co.xlabel = "after round";
    co.xticks = tx;
    co.xtick_labels = labp;
    co.n_xticks = nt;
    co.y_percent = rate && (strstr(nm, "rate") || strstr(nm, "acc"));
    co.y_from_zero = rate;
    co.width = 360;
    co.height = 240;
    ia_buf b = {0};
    svg_chart(&b, &co, &s, 1);
    ia_free(x);
    ia_free(tx);
    ia_free(lab);
    ia_free(labp);
    ia_free(names);
    return ia_buf_take(&b);
}

char *ia_report_chart_svg(const json_t *snap, const char *name) {
    if (!strcmp(name, "flag_rate")) return json_array_size(arr(snap, "batches")) ? chart_flag_rate(snap) : NULL;
    if (!strcmp(name, "constitutions")) return json_array_size(arr(snap, "constitutions")) ? chart_constitutions(snap) : NULL;
    if (!strcmp(name, "loss")) return json_array_size(arr(snap, "rounds")) ? chart_loss(snap) : NULL;
    if (!strncmp(name, "eval-", 5)) return chart_eval(snap, atoi(name + 5));
    return NULL;
}

/* ---- text helpers -------------------------------------------------------------------------- */

/* s cut to about TEXT_CUT bytes at a UTF-8 boundary, with "..." when cut. */
static void cut_text(ia_buf *b, const char *s, void (*put)(ia_buf *, const char *)) {
    size_t n = strlen(s);
    if (n <= TEXT_CUT) { put(b, s); return; }
    size_t k = TEXT_CUT;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    char *t = ia_strndup(s, k);
    if (t) put(b, t);
    ia_free(t);
    ia_buf_puts(b, " ...");
}

/* Markdown: text in a table cell or a quote, one line, pipes and markup characters escaped. */
static void md_put(ia_buf *b, const char *s) {
    for (; *s; s++) {
        if (*s == '\n') ia_buf_puts(b, " / ");
        else if (*s == '\r') continue;
        else if (strchr("|*_`<>[]#\\", *s)) { ia_buf_append(b, "\\", 1); ia_buf_append(b, s, 1); }
        else ia_buf_append(b, s, 1);
    }
}

static void md_text(ia_buf *b, const char *s) { cut_text(b, s, md_put); }

static void html_put(ia_buf *b, const char *s) { svg_escape(b, s); }
static void html_text(ia_buf *b, const char *s) { cut_text(b, s, html_put); }

static void fmt_val(char *out, size_t cap, double v, bool pct) {
    if (!isfinite(v)) snprintf(out, cap, "-");
    else if (pct) snprintf(out, cap, "%.1f%%", v * 100);
    else snprintf(out, cap, "%.4g", v);
}

/* The run's headline: base model, preset, batches, flagged, constitutions, rounds, violation rate. */
static void headline(const json_t *snap, char *out, size_t cap) {
    const json_t *cfg = json_object_get(snap, "config");
    long flagged = 0, prompts = 0;
    size_t i;
    json_t *o;
    json_array_foreach(arr(snap, "batches"), i, o) {
        flagged += inum(o, "n_flagged", 0);
        prompts += inum(o, "n_prompts", 0);
    }
    double vb = NAN, va = NAN;
    json_array_foreach(arr(snap, "evals"), i, o)
        if (!strcmp(str(o, "name"), "violation_rate")) {
            if (!strcmp(str(o, "phase"), "before")) vb = num(o, "value");
            else va = num(o, "value");
        }
    int n = snprintf(out, cap, "base model %s, preset %s: %zu batches (%ld of %ld red-team answers flagged), "
                     "%zu constitutions, %zu training rounds",
                     cfg ? str(cfg, "base") : "?", cfg ? str(cfg, "preset") : "?", json_array_size(arr(snap, "batches")),
                     flagged, prompts, json_array_size(arr(snap, "constitutions")), json_array_size(arr(snap, "rounds")));
    if (n < 0 || (size_t)n >= cap || !isfinite(vb)) return;
    if (isfinite(va))
        snprintf(out + n, cap - (size_t)n, "; held-out violation rate %.1f%% before, %.1f%% after", vb * 100, va * 100);
    else
        snprintf(out + n, cap - (size_t)n, "; held-out violation rate %.1f%% before", vb * 100);
}

/* ---- markdown ------------------------------------------------------------------------------ */

char *ia_report_markdown(const json_t *snap, const char *charts_rel) {
    ia_buf b = {0};
    char line[1024], v1[32];
    const char *rel = charts_rel ? charts_rel : "report-charts";
    ia_buf_puts(&b, "# IterAlign run report\n\n");
    ia_buf_puts(&b, "Run folder: ");
    md_put(&b, str(snap, "run_dir"));
    ia_buf_puts(&b, "\n\n");
    headline(snap, line, sizeof line);
    md_put(&b, line);
    ia_buf_puts(&b, ".\n\n");

    ia_buf_puts(&b, "## Flagged answers per batch\n\n");
    if (json_array_size(arr(snap, "batches"))) {
        ia_buf_printf(&b, "![flagged rate per batch](%s/flag_rate.svg)\n\n", rel);
        ia_buf_puts(&b, "| batch | prompts | flagged | rate | revised | passed | trained | round |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        size_t i;
        json_t *o;
        json_array_foreach(arr(snap, "batches"), i, o) {
            char rnd[24] = "-";
            if (inum(o, "trained_round", 0) > 0) snprintf(rnd, sizeof rnd, "%ld", inum(o, "trained_round", 0));
            fmt_val(v1, sizeof v1, num(o, "flag_rate"), true);
            ia_buf_printf(&b, "| %ld | %ld | %ld | %s | %ld | %ld | %ld | %s |\n", inum(o, "batch", 0) + 1, inum(o, "n_prompts", 0),
                          inum(o, "n_flagged", 0), v1, inum(o, "n_revised", 0), inum(o, "n_passed", 0), inum(o, "n_trained", 0),
                          rnd);
        }
        ia_buf_puts(&b, "\n");
    } else {
        ia_buf_puts(&b, "No batches recorded.\n\n");
    }

    ia_buf_puts(&b, "## Constitutions, in the order found\n\n");
    if (json_array_size(arr(snap, "constitutions"))) {
        ia_buf_printf(&b, "![constitutions found](%s/constitutions.svg)\n\n", rel);
        size_t i;
        json_t *c;
        json_array_foreach(arr(snap, "constitutions"), i, c) {
            ia_buf_printf(&b, "### %zu. ", i + 1);
            md_put(&b, str(c, "text"));
            ia_buf_printf(&b, "\n\nFirst found in batch %ld (source: ", inum(c, "first_batch", 0) + 1);
            md_put(&b, str(c, "source"));
            ia_buf_printf(&b, "); led to by %ld flagged answer%s", inum(c, "n_sources", 0), inum(c, "n_sources", 0) == 1 ? "" : "s");
            if (json_is_integer(json_object_get(c, "merged_into")))
                ia_buf_printf(&b, "; merged into constitution id %ld", inum(c, "merged_into", 0));
            ia_buf_puts(&b, ":\n\n");
            size_t k;
            json_t *s;
            json_array_foreach(arr(c, "sources"), k, s) {
                if (k == 5) { ia_buf_printf(&b, "- ... and %ld more\n", inum(c, "n_sources", 0) - 5); break; }
                ia_buf_printf(&b, "- batch %ld, prompt %ld: \"", inum(s, "batch", 0) + 1, inum(s, "prompt_idx", 0));
                md_text(&b, str(s, "prompt"));
                ia_buf_puts(&b, "\" answered \"");
                md_text(&b, str(s, "answer"));
                ia_buf_puts(&b, "\"");
                if (*str(s, "reason")) { ia_buf_puts(&b, " (judge: "); md_text(&b, str(s, "reason")); ia_buf_puts(&b, ")"); }
                ia_buf_puts(&b, "\n");
            }
            ia_buf_puts(&b, "\n");
        }
    } else {
        ia_buf_puts(&b, "No constitutions.\n\n");
    }

    ia_buf_puts(&b, "## Training loss per round\n\n");
    if (json_array_size(arr(snap, "rounds"))) {
        ia_buf_printf(&b, "![training loss per round](%s/loss.svg)\n\n", rel);
        ia_buf_puts(&b, "| round | batch | kind | examples | steps | first loss | final loss | seconds |\n|---:|---:|---|---:|---:|---:|---:|---:|\n");
        size_t i;
        json_t *r;
        json_array_foreach(arr(snap, "rounds"), i, r)
            ia_buf_printf(&b, "| %ld | %ld | %s | %ld | %ld | %.4f | %.4f | %.1f |\n", inum(r, "round", 0), inum(r, "batch", 0) + 1,
                          str(r, "kind"), inum(r, "n_examples", 0), inum(r, "steps", 0), num(r, "first_loss"),
                          num(r, "final_loss"), num(r, "seconds"));
        ia_buf_puts(&b, "\n");
    } else {
        ia_buf_puts(&b, "No training rounds.\n\n");
    }

    ia_buf_puts(&b, "## Evaluations before and after\n\n");
    const char **names = NULL;
    int ne = eval_names(snap, &names);
    long last = max_round(snap);
    if (ne) {
        for (int k = 0; k < ne; k++) ia_buf_printf(&b, "![%s](%s/eval-%d.svg) ", names[k], rel, k);
        ia_buf_puts(&b, "\n\n| evaluation | when | value | n |\n|---|---|---:|---:|\n");
        size_t i;
        json_t *o;
        json_array_foreach(arr(snap, "evals"), i, o) {
            char when[48];
            eval_label(o, last, when, sizeof when);
            fmt_val(v1, sizeof v1, num(o, "value"), false);
            ia_buf_puts(&b, "| ");
            md_put(&b, str(o, "name"));
            ia_buf_printf(&b, " | %s | %s | %ld |\n", when, v1, inum(o, "n", 0));
        }
        ia_buf_puts(&b, "\n");
    } else {
        ia_buf_puts(&b, "No evaluations recorded.\n\n");
    }
    ia_free(names);

    ia_buf_puts(&b, "## Answers before and after\n\n");
    json_t *ex = json_object_get(snap, "examples");
    size_t i;
    json_t *o;
    if (json_array_size(arr(ex, "heldout"))) {
        ia_buf_puts(&b, "Held-out prompts (never trained on), answered by the base model and by the aligned model:\n\n");
        json_array_foreach(arr(ex, "heldout"), i, o) {
            ia_buf_puts(&b, "- **prompt:** ");
            md_text(&b, str(o, "prompt"));
            ia_buf_printf(&b, "\n  - before%s: ", inum(o, "flagged_before", 0) ? " (flagged)" : "");
            md_text(&b, str(o, "before"));
            ia_buf_printf(&b, "\n  - after%s: ", inum(o, "flagged_after", 0) ? " (flagged)" : "");
            md_text(&b, str(o, "after"));
            ia_buf_puts(&b, "\n");
        }
        ia_buf_puts(&b, "\n");
    }
    if (json_array_size(arr(ex, "revisions"))) {
        ia_buf_puts(&b, "Flagged red-team answers and the revisions trained on:\n\n");
        json_array_foreach(arr(ex, "revisions"), i, o) {
            ia_buf_printf(&b, "- **batch %ld, prompt:** ", inum(o, "batch", 0) + 1);
            md_text(&b, str(o, "prompt"));
            ia_buf_puts(&b, "\n  - answer: ");
            md_text(&b, str(o, "answer"));
            ia_buf_puts(&b, "\n  - revision: ");
            md_text(&b, str(o, "revision"));
            ia_buf_puts(&b, "\n");
        }
        ia_buf_puts(&b, "\n");
    }
    if (json_array_size(arr(snap, "notes"))) {
        ia_buf_puts(&b, "## Notes\n\n");
        json_array_foreach(arr(snap, "notes"), i, o) {
            ia_buf_puts(&b, "- ");
            md_put(&b, json_string_value(o));
            ia_buf_puts(&b, "\n");
        }
    }
    return ia_buf_take(&b);
}

/* ---- HTML ---------------------------------------------------------------------------------- */

static const char CSS[] =
    "body{font-family:sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222;line-height:1.45}"
    "h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}"
    "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px}"
    "th{background:#f4f4f4}td.n{text-align:right}.charts{display:flex;flex-wrap:wrap;gap:12px}"
    ".con{border-left:4px solid #2ca02c;padding:2px 12px;margin:12px 0}.q{color:#555}.flag{color:#d62728}"
    ".ok{color:#2ca02c}.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:8px 0 16px}"
    ".pair div{background:#fafafa;border:1px solid #eee;padding:6px 10px;white-space:pre-wrap;font-size:13px}"
    "svg{border:1px solid #eee}";

static void chart_inline(ia_buf *b, const json_t *snap, const char *name) {
    char *svg = ia_report_chart_svg(snap, name);
    if (svg) ia_buf_puts(b, svg);
    ia_free(svg);
}

char *ia_report_html(const json_t *snap) {
    ia_buf b = {0};
    char line[1024], v1[32];
    ia_buf_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>IterAlign run report</title>\n<style>");
    ia_buf_puts(&b, CSS);
    ia_buf_puts(&b, "</style></head><body>\n<h1>IterAlign run report</h1>\n<p>Run folder: <code>");
    html_put(&b, str(snap, "run_dir"));
    ia_buf_puts(&b, "</code></p>\n<p>");
    headline(snap, line, sizeof line);
    html_put(&b, line);
    ia_buf_puts(&b, ".</p>\n");

    /* charts first, so a screenshot of the top of the page shows them */
    ia_buf_puts(&b, "<h2 id=\"charts\">Charts</h2>\n<div class=\"charts\">\n");
    char **names = NULL;
    int nc = ia_report_chart_names(snap, &names);
    for (int i = 0; i < nc; i++) {
        chart_inline(&b, snap, names[i]);
        ia_free(names[i]);
    }
    ia_free(names);
    ia_buf_puts(&b, "</div>\n");

    ia_buf_puts(&b, "<h2>Flagged answers per batch</h2>\n");
    if (json_array_size(arr(snap, "batches"))) {
        ia_buf_puts(&b, "<table><tr><th>batch</th><th>prompts</th><th>flagged</th><th>rate</th><th>revised</th><th>passed</th>"
                        "<th>trained</th><th>round</th></tr>\n");
        size_t i;
        json_t *o;
        json_array_foreach(arr(snap, "batches"), i, o) {
            fmt_val(v1, sizeof v1, num(o, "flag_rate"), true);
            ia_buf_printf(&b, "<tr><td class=n>%ld</td><td class=n>%ld</td><td class=n>%ld</td><td class=n>%s</td><td class=n>%ld</td>"
                              "<td class=n>%ld</td><td class=n>%ld</td><td class=n>",
                          inum(o, "batch", 0) + 1, inum(o, "n_prompts", 0), inum(o, "n_flagged", 0), v1, inum(o, "n_revised", 0),
                          inum(o, "n_passed", 0), inum(o, "n_trained", 0));
            if (inum(o, "trained_round", 0) > 0) ia_buf_printf(&b, "%ld", inum(o, "trained_round", 0));
            else ia_buf_puts(&b, "-");
            ia_buf_puts(&b, "</td></tr>\n");
        }
        ia_buf_puts(&b, "</table>\n");
    } else {
        ia_buf_puts(&b, "<p>No batches recorded.</p>\n");
    }

    ia_buf_puts(&b, "<h2>Constitutions, in the order found</h2>\n");
    size_t i;
    json_t *c, *o;
    json_array_foreach(arr(snap, "constitutions"), i, c) {
        ia_buf_printf(&b, "<div class=\"con\"><p><b>%zu. ", i + 1);
        html_put(&b, str(c, "text"));
        ia_buf_printf(&b, "</b><br><span class=q>first found in batch %ld; source ", inum(c, "first_batch", 0) + 1);
        html_put(&b, str(c, "source"));
        ia_buf_printf(&b, "; led to by %ld flagged answer%s", inum(c, "n_sources", 0), inum(c, "n_sources", 0) == 1 ? "" : "s");
        if (json_is_integer(json_object_get(c, "merged_into")))
            ia_buf_printf(&b, "; merged into constitution id %ld", inum(c, "merged_into", 0));
        ia_buf_puts(&b, "</span></p>\n<ul>\n");
        size_t k;
        json_t *s;
        json_array_foreach(arr(c, "sources"), k, s) {
            /* the first few in view, the rest folded (no script needed) */
            if (k == 5) ia_buf_printf(&b, "</ul><details><summary>%zu more</summary><ul>\n", json_array_size(arr(c, "sources")) - 5);
            ia_buf_printf(&b, "<li>batch %ld, prompt %ld: <span class=q>", inum(s, "batch", 0) + 1, inum(s, "prompt_idx", 0));
            html_text(&b, str(s, "prompt"));
            ia_buf_puts(&b, "</span> &rarr; <span class=flag>");
            html_text(&b, str(s, "answer"));
            ia_buf_puts(&b, "</span>");
            if (*str(s, "reason")) { ia_buf_puts(&b, " <i>(judge: "); html_text(&b, str(s, "reason")); ia_buf_puts(&b, ")</i>"); }
            ia_buf_puts(&b, "</li>\n");
        }
        if (inum(c, "n_sources", 0) > (long)json_array_size(arr(c, "sources")))
            ia_buf_printf(&b, "<li>... and %ld more (all in the run store)</li>\n",
                          inum(c, "n_sources", 0) - (long)json_array_size(arr(c, "sources")));
        ia_buf_puts(&b, json_array_size(arr(c, "sources")) > 5 ? "</ul></details></div>\n" : "</ul></div>\n");
    }
    if (!json_array_size(arr(snap, "constitutions"))) ia_buf_puts(&b, "<p>No constitutions.</p>\n");

    ia_buf_puts(&b, "<h2>Training rounds</h2>\n");
    if (json_array_size(arr(snap, "rounds"))) {
        ia_buf_puts(&b, "<table><tr><th>round</th><th>batch</th><th>kind</th><th>examples</th><th>steps</th><th>first loss</th>"
                        "<th>final loss</th><th>seconds</th></tr>\n");
        json_array_foreach(arr(snap, "rounds"), i, o)
            ia_buf_printf(&b, "<tr><td class=n>%ld</td><td class=n>%ld</td><td>%s</td><td class=n>%ld</td><td class=n>%ld</td>"
                              "<td class=n>%.4f</td><td class=n>%.4f</td><td class=n>%.1f</td></tr>\n",
                          inum(o, "round", 0), inum(o, "batch", 0) + 1, str(o, "kind"), inum(o, "n_examples", 0), inum(o, "steps", 0),
                          num(o, "first_loss"), num(o, "final_loss"), num(o, "seconds"));
        ia_buf_puts(&b, "</table>\n");
    } else {
        ia_buf_puts(&b, "<p>No training rounds.</p>\n");
    }

    ia_buf_puts(&b, "<h2>Evaluations before and after</h2>\n");
    long last = max_round(snap);
    if (json_array_size(arr(snap, "evals"))) {
        ia_buf_puts(&b, "<table><tr><th>evaluation</th><th>when</th><th>value</th><th>n</th></tr>\n");
        json_array_foreach(arr(snap, "evals"), i, o) {
            char when[48];
            eval_label(o, last, when, sizeof when);
            fmt_val(v1, sizeof v1, num(o, "value"), false);
            ia_buf_puts(&b, "<tr><td>");
            html_put(&b, str(o, "name"));
            ia_buf_printf(&b, "</td><td>%s</td><td class=n>%s</td><td class=n>%ld</td></tr>\n", when, v1, inum(o, "n", 0));
        }
        ia_buf_puts(&b, "</table>\n");
    } else {
        ia_buf_puts(&b, "<p>No evaluations recorded.</p>\n");
    }

    ia_buf_puts(&b, "<h2>Answers before and after</h2>\n");
    json_t *ex = json_object_get(snap, "examples");
    json_array_foreach(arr(ex, "heldout"), i, o) {
        ia_buf_puts(&b, "<p class=q>Held-out prompt: ");
        html_text(&b, str(o, "prompt"));
        ia_buf_printf(&b, "</p><div class=\"pair\"><div><b class=%s>before%s</b>\n", inum(o, "flagged_before", 0) ? "flag" : "ok",
                      inum(o, "flagged_before", 0) ? " (flagged)" : "");
        html_text(&b, str(o, "before"));
        ia_buf_printf(&b, "</div><div><b class=%s>after%s</b>\n", inum(o, "flagged_after", 0) ? "flag" : "ok",
                      inum(o, "flagged_after", 0) ? " (flagged)" : "");
        html_text(&b, str(o, "after"));
        ia_buf_puts(&b, "</div></div>\n");
    }
    json_array_foreach(arr(ex, "revisions"), i, o) {
        ia_buf_printf(&b, "<p class=q>Batch %ld red-team prompt: ", inum(o, "batch", 0) + 1);
        html_text(&b, str(o, "prompt"));
        ia_buf_puts(&b, "</p><div class=\"pair\"><div><b class=flag>flagged answer</b>\n");
        html_text(&b, str(o, "answer"));
        ia_buf_puts(&b, "</div><div><b class=ok>revision trained on</b>\n");
        html_text(&b, str(o, "revision"));
        ia_buf_puts(&b, "</div></div>\n");
    }
    if (json_array_size(arr(snap, "notes"))) {
        ia_buf_puts(&b, "<h2>Notes</h2><ul>\n");
        json_array_foreach(arr(snap, "notes"), i, o) {
            ia_buf_puts(&b, "<li>");
            html_put(&b, json_string_value(o));
            ia_buf_puts(&b, "</li>\n");
        }
        ia_buf_puts(&b, "</ul>\n");
    }
    ia_buf_printf(&b, "<p class=q>Written by iteralign %s.</p>\n</body></html>\n", IA_VERSION);
    return ia_buf_take(&b);
}

/* ---- files --------------------------------------------------------------------------------- */

static int write_text(const char *dir, const char *name, const char *text, ia_error *err) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ia_error_set(err, IA_ERR_IO, "%s: %s", tmp, strerror(errno));
    bool ok = fputs(text, f) >= 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return ia_error_set(err, IA_ERR_IO, "%s: cannot write", path);
    }
    return IA_OK;
}

static int dump_cb(const char *buf, size_t size, void *data) {
    ia_buf_append((ia_buf *)data, buf, size);
    return ((ia_buf *)data)->oom ? -1 : 0;
}

int ia_report_write(const char *run_dir, const char *out_dir, bool json, ia_error *err) {
    json_t *snap = ia_report_snapshot(run_dir, err);
    if (!snap) return err ? err->code : IA_ERR_IO;
    const char *dir = out_dir ? out_dir : run_dir;
    int rc = IA_OK;
    char cdir[4096];
    snprintf(cdir, sizeof cdir, "%s/report-charts", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) rc = ia_error_set(err, IA_ERR_IO, "%s: %s", dir, strerror(errno));
    if (rc == IA_OK && mkdir(cdir, 0755) != 0 && errno != EEXIST) rc = ia_error_set(err, IA_ERR_IO, "%s: %s", cdir, strerror(errno));
    char **names = NULL;
    int nc = rc == IA_OK ? ia_report_chart_names(snap, &names) : 0;
    for (int i = 0; i < nc; i++) {
        char *svg = rc == IA_OK ? ia_report_chart_svg(snap, names[i]) : NULL;
        if (svg) {
            char fn[64];
            snprintf(fn, sizeof fn, "%s.svg", names[i]);
            rc = write_text(cdir, fn, svg, err);
        }
        ia_free(svg);
        ia_free(names[i]);
    }
    ia_free(names);
    char *md = rc == IA_OK ? ia_report_markdown(snap, "report-charts") : NULL;
    char *html = rc == IA_OK ? ia_report_html(snap) : NULL;
    if (rc == IA_OK && (!md || !html)) rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory rendering the report");
    if (rc == IA_OK) rc = write_text(dir, "report.md", md, err);
    if (rc == IA_OK) rc = write_text(dir, "report.html", html, err);
    if (rc == IA_OK && json) {
        ia_buf jb = {0};
        if (json_dump_callback(snap, dump_cb, &jb, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) != 0 || jb.oom)
            rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory writing report.json");
        else {
            ia_buf_puts(&jb, "\n");
            rc = write_text(dir, "report.json", jb.data, err);
        }
        ia_buf_free(&jb);
    }
    ia_free(md);
    ia_free(html);
    json_decref(snap);
    return rc;
}
