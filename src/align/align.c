/* align.c — the IterAlign loop: run creation and resumption (configuration checks, inputs read and
 * validated before anything is written), and the stage machine over the run store: red-team →
 * judge → propose → revise → re-judge → train per batch, with the held-out measurement before and
 * after and the final merge. Each stage reads only committed rows and commits all it produces in
 * one transaction, so kill -9 at any point resumes at the first stage not marked done. */
#include "align/align_internal.h"
#include "eval/eval.h"
#include "eval/eval_judges.h"
#include "model/model.h"
#include "tensor/tensor.h"
#include "train/train.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct run {
    char *dir;
    ia_store *st;
    ia_align_config cfg;
    const ia_align_callbacks *cb;
    ia_model *model;
    int model_round;            /* the round whose weights the model carries (0 = base) */
    ia_presenter pres;
    ia_rules *rules;
    bool use_rules, use_llm;
    ia_teacher *judge_t, *prop_t;
    ia_judge_style jstyle, pstyle;
    ia_prompt *train, *held;
    int n_train, n_held, n_batches;
    char **train_pres, **held_pres; /* presented texts */
    const char *stage;
    int batch;
    double t_stage;
    int lock_fd;
    bool recreate;              /* the folder holds a run whose creation never committed */
} run;

/* ---- small helpers ---- */
static void logf_(run *R, const char *fmt, ...) IA_PRINTF(2, 3);
static void logf_(run *R, const char *fmt, ...) {
    if (!R->cb || !R->cb->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    R->cb->log(R->cb->ud, line);
}

static void stage_begin(run *R, const char *stage, int batch) {
    R->stage = stage;
    R->batch = batch;
    R->t_stage = ia_time_now();
}

static void progress(void *ud, int done, int total) {
    run *R = ud;
    if (!R->cb || !R->cb->progress) return;
    ia_align_progress p = {R->stage, R->batch, R->n_batches, done, total, ia_time_now() - R->t_stage};
    R->cb->progress(R->cb->ud, &p);
}

static void train_progress(void *ud, const ia_train_progress *tp) { progress(ud, tp->step, tp->total_steps); }

/* splitmix64 of the run seed, a stage number and a batch: every sampled generation has its own
 * stream, the same on every run and resume. */
static uint64_t mix_seed(uint64_t seed, uint64_t stage, int64_t batch) {
    uint64_t z = seed ^ (stage * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)(batch + 7) * 0xBF58476D1CE4E5B9ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static char *path_join(const char *dir, const char *name) {
    ia_buf b = {0};
    ia_buf_printf(&b, "%s/%s", dir, name);
    return ia_buf_take(&b);
}

static const char *finish_name(ia_finish f) {
    switch (f) {
    case IA_FINISH_STOP: return "stop";
    case IA_FINISH_EOS: return "eos";
    case IA_FINISH_CONTEXT: return "context";
    default: return "length";
    }
}

static ia_sampling redteam_sampling(const ia_align_config *c) {
    ia_sampling s = ia_sampling_default();
    s.temperature = c->temperature;
    s.top_p = c->top_p;
    s.top_k = c->top_k;
    s.min_p = c->min_p;
    s.frequency_penalty = c->frequency_penalty;
    s.repeat_penalty = c->repeat_penalty;
    s.max_tokens = c->max_tokens;
    s.n_stop = c->stop.n;
    for (int i = 0; i < c->stop.n && i < IA_MAX_STOP; i++) s.stop[i] = c->stop.v[i];
    return s;
}

static int generate(run *R, const char *const *prompts, int n, ia_sampling s, ia_completion *out, ia_error *err) {
    ia_generate_opts go = ia_generate_opts_default();
    go.sampling = s;
    go.parse_special = R->pres.mode == IA_PRESENT_CHAT;
    go.n_parallel = R->cfg.parallel > 0 ? R->cfg.parallel : 64;
    go.progress = progress;
    go.progress_ud = R;
    return ia_generate(R->model, prompts, n, &go, out, err);
}

/* ---- files ---- */
int ia_write_file_atomic(const char *path, const char *data, size_t len, ia_error *err) {
    ia_buf tmp = {0};
    ia_buf_printf(&tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp.data, "wb");
    if (!f) {
        ia_error_set(err, IA_ERR_IO, "%s: cannot write: %s", tmp.data, strerror(errno));
        ia_buf_free(&tmp);
        return IA_ERR_IO;
    }
    bool ok = fwrite(data, 1, len, f) == len;
    ok &= fflush(f) == 0;
    ok &= fsync(fileno(f)) == 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp.data, path) != 0) {
        ia_error_set(err, IA_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp.data);
        ia_buf_free(&tmp);
        return IA_ERR_IO;
    }
    ia_buf_free(&tmp);
    return IA_OK;
}

int ia_file_sha256(const char *path, char out[65], int64_t *size, ia_error *err) {
    size_t len;
    char *data = ia_file_read(path, &len, err);
    if (!data) return err ? err->code : IA_ERR_IO;
    ia_client_sha256_hex(data, len, out);
    if (size) *size = (int64_t)len;
    ia_free(data);
    return IA_OK;
}

/* A cheap identity of a (possibly many-GB) model file: its size and the hash of its first and
 * last MiB, enough to notice that a different model now sits at the path. */
static int model_identity(const char *path, char out[65], ia_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ia_error_set(err, IA_ERR_IO, "%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    size_t chunk = 1 << 20;
    char *buf = ia_malloc(2 * chunk + 32);
    size_t n1 = 0, n2 = 0;
    fseek(f, 0, SEEK_SET);
    n1 = fread(buf, 1, chunk, f);
    if (size > (long)chunk) {
        fseek(f, size - (long)chunk, SEEK_SET);
        n2 = fread(buf + n1, 1, chunk, f);
    }
    fclose(f);
    int k = snprintf(buf + n1 + n2, 32, "|%ld", size);
    ia_client_sha256_hex(buf, n1 + n2 + (size_t)k, out);
    ia_free(buf);
    return IA_OK;
}

/* SHA-256 over the contents of a list of files (in order, each with its length). */
static int files_hash(const ia_strv *files, char out[65], ia_error *err) {
    ia_buf all = {0};
    for (int i = 0; i < files->n; i++) {
        size_t len;
        char *d = ia_file_read(files->v[i], &len, err);
        if (!d) {
            ia_buf_free(&all);
            return err ? err->code : IA_ERR_IO;
        }
        ia_buf_printf(&all, "%zu:", len);
        ia_buf_append(&all, d, len);
        ia_free(d);
    }
    ia_client_sha256_hex(all.data ? all.data : "", all.len, out);
    ia_buf_free(&all);
    return IA_OK;
}

/* ---- run creation / resumption ---- */

/* Reads every prompt file, splits off the held-out share, caps the counts. */
static int read_inputs(const ia_align_config *c, ia_prompt **tr, int *ntr, ia_prompt **he, int *nhe, ia_error *err) {
    *tr = *he = NULL;
    *ntr = *nhe = 0;
    for (int i = 0; i < c->redteam.n; i++)
        if (ia_prompts_read(c->redteam.v[i], c->format, c->column, tr, ntr, err) != IA_OK) goto fail;
    for (int i = 0; i < c->heldout.n; i++)
        if (ia_prompts_read(c->heldout.v[i], c->format, c->column, he, nhe, err) != IA_OK) goto fail;
    if (c->heldout.n == 0 && c->heldout_frac > 0) {
        /* every k-th prompt, by position: a deterministic, evenly spread split */
        int want = (int)lround(c->heldout_frac * *ntr);
        if (want > 0 && want < *ntr) {
            ia_prompt *keep = ia_calloc((size_t)*ntr, sizeof *keep), *hold = ia_calloc((size_t)want, sizeof *hold);
            int nk = 0, nh = 0;
            for (int i = 0; i < *ntr; i++) {
                bool h = nh < want && (int64_t)(i + 1) * want / *ntr > (int64_t)i * want / *ntr;
                if (h) hold[nh++] = (*tr)[i];
                else keep[nk++] = (*tr)[i];
            }
            ia_free(*tr);
            *tr = keep;
            *ntr = nk;
            *he = hold;
            *nhe = nh;
        }
    }
    if (c->max_prompts > 0 && *ntr > c->max_prompts) {
        for (int i = c->max_prompts; i < *ntr; i++) {
            ia_free((*tr)[i].text);
            ia_free((*tr)[i].messages);
            ia_free((*tr)[i].source);
        }
        *ntr = c->max_prompts;
    }
    if (c->max_heldout > 0 && *nhe > c->max_heldout) {
        for (int i = c->max_heldout; i < *nhe; i++) {
            ia_free((*he)[i].text);
            ia_free((*he)[i].messages);
            ia_free((*he)[i].source);
        }
        *nhe = c->max_heldout;
    }
    return IA_OK;
fail:
    ia_prompts_free(*tr, *ntr);
    ia_prompts_free(*he, *nhe);
    *tr = *he = NULL;
    *ntr = *nhe = 0;
    return err && err->code ? err->code : IA_ERR_IO;
}

/* Entries of a folder other than ".", ".." and `except`. */
static int dir_entries(const char *dir, const char *except) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, except)) n++;
    closedir(d);
    return n;
}

static int lock_dir(run *R, ia_error *err) {
    char *p = path_join(R->dir, ".lock");
    R->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ia_free(p);
    if (R->lock_fd < 0) return ia_error_set(err, IA_ERR_IO, "%s: cannot create the lock file: %s", R->dir, strerror(errno));
    if (flock(R->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return ia_error_set(err, IA_ERR_ARG, "%s: another `iteralign align` is running on this run folder", R->dir);
    return IA_OK;
}

/* mkdir -p for the run folder's parents (a user's --run runs/today/a expects them made) */
static int make_parents(const char *dir, ia_error *err) {
    char *p = ia_strdup(dir);
    if (!p) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            ia_error_set(err, IA_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
            ia_free(p);
            return IA_ERR_IO;
        }
        *s = '/';
    }
    ia_free(p);
    return IA_OK;
}

static int make_dirs(const char *dir, ia_error *err) {
    const char *sub[] = {"", "adapters", "train", NULL};
    if (make_parents(dir, err) != IA_OK) return IA_ERR_IO;
    for (int i = 0; sub[i]; i++) {
        char *p = sub[i][0] ? path_join(dir, sub[i]) : ia_strdup(dir);
        int rc = mkdir(p, 0755);
        if (rc != 0 && errno != EEXIST) {
            ia_error_set(err, IA_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
            ia_free(p);
            return IA_ERR_IO;
        }
        ia_free(p);
    }
    return IA_OK;
}

/* Loads the judges and teachers the configuration asks for. */
static int open_judges(run *R, const char *rules_json, ia_error *err) {
    const ia_align_config *c = &R->cfg;
    ia_align_judges(c, &R->use_rules, &R->use_llm);
    R->jstyle = !strcmp(c->judge_style, "paper") ? IA_STYLE_PAPER : IA_STYLE_IMPROVED;
    R->pstyle = !strcmp(c->proposer_style, "paper") ? IA_STYLE_PAPER : IA_STYLE_IMPROVED;
    if (R->use_rules) {
        R->rules = rules_json ? ia_rules_parse(rules_json, strlen(rules_json), c->rules, err) : ia_rules_load(c->rules, err);
        if (!R->rules) return err->code;
    }
    const char *ju = c->judge_url ? c->judge_url : c->teacher;
    const char *jm = c->judge_model ? c->judge_model : c->teacher_model;
    const char *pu = c->proposer_url ? c->proposer_url : c->teacher;
    const char *pm = c->proposer_model ? c->proposer_model : c->teacher_model;
    if (R->use_llm) {
        R->judge_t = ia_teacher_open(ju, jm, c, R->st, err);
        if (!R->judge_t) return err->code;
    }
    /* a proposer is used whenever one is configured, also next to a rules-only judge: it turns
       the flagged answers into constitutions worded more generally than a detector's own text */
    if (pu) {
        if (R->judge_t && !strcmp(ju, pu) && ((!jm && !pm) || (jm && pm && !strcmp(jm, pm)))) {
            R->prop_t = R->judge_t;
        } else {
            R->prop_t = ia_teacher_open(pu, pm, c, R->st, err);
            if (!R->prop_t) return err->code;
        }
    }
    return IA_OK;
}

/* Names of result-affecting fields the user set to a value other than the stored one. */
static int check_resume(run *R, const ia_align_config *user, const ia_strv *explicit_set, ia_error *err) {
    ia_buf diff = {0};
    int n;
    const ia_cfg_field *fs = ia_align_config_fields(&n);
    for (int i = 0; i < n; i++) {
        const ia_cfg_field *f = &fs[i];
        if (!ia_strv_has(explicit_set, f->name) || !f->results) continue;
        bool same;
        char *a = ia_align_config_get(&R->cfg, f), *b = ia_align_config_get(user, f);
        if (!strcmp(f->name, "base")) {
            char h[65];
            char *stored = ia_store_meta_get(R->st, "base_identity", NULL);
            same = model_identity(user->base, h, NULL) == IA_OK && stored && !strcmp(stored, h);
            ia_free(stored);
        } else if (!strcmp(f->name, "redteam") || !strcmp(f->name, "heldout")) {
            char h[65];
            char key[32];
            snprintf(key, sizeof key, "%s_sha256", f->name);
            char *stored = ia_store_meta_get(R->st, key, NULL);
            const ia_strv *v = (const ia_strv *)((const char *)user + f->offset);
            same = files_hash(v, h, NULL) == IA_OK && stored && !strcmp(stored, h);
            ia_free(stored);
        } else if (!strcmp(f->name, "rules")) {
            ia_rules *r = ia_rules_load(user->rules, NULL);
            char *stored = ia_store_meta_get(R->st, "rules_sha256", NULL);
            same = r && stored && !strcmp(stored, ia_rules_hash(r));
            ia_rules_free(r);
            ia_free(stored);
        } else {
            same = !strcmp(a, b);
        }
        if (!same) {
            char flag[64];
            snprintf(flag, sizeof flag, "%s", f->name);
            for (char *q = flag; *q; q++)
                if (*q == '_') *q = '-';
            ia_buf_printf(&diff, "%s--%s (run: %s, now: %s)", diff.len ? ", " : "", flag, a, b);
        }
        ia_free(a);
        ia_free(b);
    }
    if (diff.len) {
        ia_error_set(err, IA_ERR_ARG,
                     "%s was started with other settings: %s; resuming with them would mix results. Resume with "
                     "`iteralign align --run %s` alone, or start a new run folder",
                     R->dir, diff.data, R->dir);
        ia_buf_free(&diff);
        return IA_ERR_ARG;
    }
    /* settings that do not change results (endpoints, threads, timeouts) follow the user */
    for (int i = 0; i < n; i++) {
        const ia_cfg_field *f = &fs[i];
        if (!ia_strv_has(explicit_set, f->name) || f->results) continue;
        char *v = ia_align_config_get(user, f);
        if (f->type == IA_CFG_STR) {
            char **dst = (char **)((char *)&R->cfg + f->offset);
            ia_free(*dst);
            *dst = *(char *const *)((const char *)user + f->offset) ? ia_strdup(v) : NULL;
        } else {
            ia_align_config_set(&R->cfg, f, v, NULL);
        }
        ia_free(v);
    }
    return IA_OK;
}

static int create_run(run *R, const ia_align_config *cfg, ia_error *err) {
    /* Everything that can be wrong with the inputs is found here, before the folder exists. */
    if (ia_align_config_validate(cfg, err) != IA_OK) return err->code;
    ia_align_config *c = &R->cfg;
    json_t *cj = ia_align_config_to_json(cfg);
    ia_align_config_defaults(c);
    ia_align_config_from_json(c, cj, err);
    json_decref(cj);
    int rc = read_inputs(c, &R->train, &R->n_train, &R->held, &R->n_held, err);
    if (rc != IA_OK) return rc;
    if (R->n_train == 0) return ia_error_set(err, IA_ERR_FORMAT, "no red-team prompts left after the held-out split");
    char *rules_json = NULL;
    if (c->rules) {
        size_t len;
        rules_json = ia_file_read(c->rules, &len, err);
        if (!rules_json) return err->code;
        ia_rules *r = ia_rules_parse(rules_json, len, c->rules, err);
        if (!r) {
            ia_free(rules_json);
            return err->code;
        }
        ia_rules_free(r);
    }
    if (c->eval && c->eval[0]) {
        bool sel[IA_EVAL_TASK_COUNT];
        if ((rc = ia_eval_tasks_parse(c->eval, sel, err)) != IA_OK) {
            ia_error_prefix(err, "--eval");
            ia_free(rules_json);
            return rc;
        }
        if (sel[IA_EVAL_HARMFUL] && !rules_json) {
            ia_free(rules_json);
            return ia_error_set(err, IA_ERR_ARG, "--eval harmful_rate needs a judge for its answers: give --rules FILE");
        }
    }
    /* the teachers too: a bad URL, a missing key variable, a local teacher that is not a model */
    {
        const char *specs[2][2] = {{c->judge_url ? c->judge_url : c->teacher, c->judge_model ? c->judge_model : c->teacher_model},
                                   {c->proposer_url ? c->proposer_url : c->teacher, c->proposer_model ? c->proposer_model : c->teacher_model}};
        for (int k = 0; k < 2; k++) {
            if (!specs[k][0] || (k == 1 && specs[0][0] && !strcmp(specs[0][0], specs[1][0]))) continue;
            ia_teacher *t = ia_teacher_open(specs[k][0], specs[k][1], c, NULL, err);
            if (!t) {
                ia_free(rules_json);
                return err->code;
            }
            ia_teacher_free(t);
        }
    }
    R->model = ia_model_load(c->base, err);
    if (!R->model) {
        ia_error_prefix(err, "--base");
        ia_free(rules_json);
        return err->code;
    }
    if ((rc = ia_presenter_init(&R->pres, c, R->model, err)) != IA_OK) {
        ia_free(rules_json);
        return rc;
    }
    char base_id[65], rt_hash[65], ho_hash[65];
    if ((rc = model_identity(c->base, base_id, err)) || (rc = files_hash(&c->redteam, rt_hash, err)) ||
        (rc = files_hash(&c->heldout, ho_hash, err))) {
        ia_free(rules_json);
        return rc;
    }
    struct stat sb;
    if (stat(R->dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            ia_free(rules_json);
            return ia_error_set(err, IA_ERR_ARG, "%s exists and is not a folder", R->dir);
        }
        char *db = path_join(R->dir, "run.db");
        bool has_db = access(db, F_OK) == 0;
        ia_free(db);
        if (!has_db && !R->recreate && dir_entries(R->dir, ".lock") > 0) {
            /* only an empty folder may become a run folder: never mix a run into other files */
            ia_free(rules_json);
            return ia_error_set(err, IA_ERR_ARG, "%s exists, is not empty and holds no run (run.db); choose a new folder", R->dir);
        }
    }
    if ((rc = make_dirs(R->dir, err)) != IA_OK || (rc = lock_dir(R, err)) != IA_OK) {
        ia_free(rules_json);
        return rc;
    }
    char *db = path_join(R->dir, "run.db");
    R->st = ia_store_open(db, true, err);
    ia_free(db);
    if (!R->st) {
        ia_free(rules_json);
        return err->code;
    }
    /* one transaction: the configuration, the input identities and every prompt */
    rc = ia_store_begin(R->st, err);
    json_t *cfgj = ia_align_config_to_json(c);
    char *cfgs = json_dumps(cfgj, JSON_COMPACT);
    json_decref(cfgj);
    if (rc == IA_OK) rc = ia_store_meta_set(R->st, "config", cfgs, err);
    free(cfgs);
    if (rc == IA_OK) rc = ia_store_meta_set(R->st, "base_identity", base_id, err);
    if (rc == IA_OK) rc = ia_store_meta_set(R->st, "redteam_sha256", rt_hash, err);
    if (rc == IA_OK) rc = ia_store_meta_set(R->st, "heldout_sha256", ho_hash, err);
    if (rc == IA_OK) rc = ia_store_meta_set(R->st, "iteralign_version", IA_VERSION, err);
    if (rc == IA_OK) rc = ia_store_meta_set(R->st, "state", "running", err);
    if (rc == IA_OK && rules_json) {
        /* the run keeps its own copy: it resumes with the same rules wherever the file went */
        char *copy = path_join(R->dir, "rules.json");
        rc = ia_write_file_atomic(copy, rules_json, strlen(rules_json), err);
        ia_free(copy);
        if (rc == IA_OK) rc = ia_store_meta_set(R->st, "rules_json", rules_json, err);
        ia_rules *r = ia_rules_parse(rules_json, strlen(rules_json), c->rules, NULL);
        if (rc == IA_OK) rc = ia_store_meta_set(R->st, "rules_sha256", ia_rules_hash(r), err);
        ia_rules_free(r);
    }
    for (int split = 0; split < 2 && rc == IA_OK; split++) {
        ia_prompt *ps = split ? R->held : R->train;
        int np = split ? R->n_held : R->n_train;
        for (int i = 0; i < np && rc == IA_OK; i++) {
            char *pres = ia_present(&R->pres, &ps[i], NULL, 0, NULL, err);
            if (!pres) {
                rc = err->code ? err->code : IA_ERR_NOMEM;
                break;
            }
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO prompts(split, idx, source, line, text, messages, presented)"
                               " VALUES(?, ?, ?, ?, ?, ?, ?)",
                               "sisisss", split ? "heldout" : "train", i, ps[i].source, ps[i].line, ps[i].text, ps[i].messages,
                               pres);
            ia_free(pres);
        }
    }
    if (rc == IA_OK) rc = ia_store_commit(R->st, err);
    else ia_store_rollback(R->st);
    ia_free(rules_json);
    return rc;
}

/* Loads prompts (and their presented form) from the store. */
static int load_prompts(run *R, const char *split, ia_prompt **out, char ***pres, int *n, ia_error *err) {
    ia_store_lock(R->st);
    sqlite3_stmt *q = ia_store_prepare(R->st, err, "SELECT text, messages, source, line, presented FROM prompts WHERE split=? ORDER BY idx",
                                       "s", split);
    int rc = q ? IA_OK : IA_ERR_DB;
    *out = NULL;
    *pres = NULL;
    *n = 0;
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        *out = ia_realloc(*out, sizeof **out * (size_t)(*n + 1));
        *pres = ia_realloc(*pres, sizeof(char *) * (size_t)(*n + 1));
        ia_prompt *p = &(*out)[*n];
        p->text = ia_store_col_text(q, 0);
        p->messages = sqlite3_column_type(q, 1) == SQLITE_NULL ? NULL : ia_store_col_text(q, 1);
        p->source = ia_store_col_text(q, 2);
        p->line = sqlite3_column_int(q, 3);
        (*pres)[*n] = ia_store_col_text(q, 4);
        (*n)++;
    }
    sqlite3_finalize(q);
    ia_store_unlock(R->st);
    return rc;
}

/* Removes what a killed run may have left half-written: "<name>.tmp..." files (every file of a run
 * is written under a temporary name and renamed). */
static void remove_tmp_files(const char *dir) {
    const char *sub[] = {"", "adapters", "train", "models", NULL};
    for (int i = 0; sub[i]; i++) {
        char *d = sub[i][0] ? path_join(dir, sub[i]) : ia_strdup(dir);
        DIR *dd = opendir(d);
        struct dirent *e;
        while (dd && (e = readdir(dd)) != NULL) {
            if (!strstr(e->d_name, ".tmp")) continue;
            char *p = path_join(d, e->d_name);
            unlink(p);
            ia_free(p);
        }
        if (dd) closedir(dd);
        ia_free(d);
    }
}

static int open_existing(run *R, const ia_align_config *user, const ia_strv *explicit_set, ia_error *err) {
    int rc = lock_dir(R, err);
    if (rc != IA_OK) return rc;
    remove_tmp_files(R->dir);
    char *db = path_join(R->dir, "run.db");
    /* create: a store killed while its schema was being written is empty, and is made whole here
       (then found without a configuration, and the run created again) */
    R->st = ia_store_open(db, true, err);
    ia_free(db);
    if (!R->st) return err->code;
    char *cfgs = ia_store_meta_get(R->st, "config", err);
    if (!cfgs) return IA_ERR_FORMAT; /* killed while the run was being created: the caller starts it anew */
    json_t *cj = json_loads(cfgs, 0, NULL);
    ia_free(cfgs);
    ia_align_config_defaults(&R->cfg);
    ia_align_config_from_json(&R->cfg, cj, err);
    json_decref(cj);
    if ((rc = check_resume(R, user, explicit_set, err)) != IA_OK) return rc;
    /* the base model must still be the one the run started from */
    char id[65];
    char *stored = ia_store_meta_get(R->st, "base_identity", NULL);
    if (model_identity(R->cfg.base, id, err) != IA_OK) {
        ia_free(stored);
        ia_error_prefix(err, "the run's base model");
        return err->code;
    }
    bool same = stored && !strcmp(stored, id);
    ia_free(stored);
    if (!same)
        return ia_error_set(err, IA_ERR_ARG, "%s: the base model %s changed since the run started; refusing to resume", R->dir,
                            R->cfg.base);
    R->model = ia_model_load(R->cfg.base, err);
    if (!R->model) return err->code;
    return ia_presenter_init(&R->pres, &R->cfg, R->model, err);
}

/* ---- model state ---- */
static char *checkpoint_path(run *R, int round) {
    char *p = NULL;
    ia_store_get_text(R->st, NULL, &p, "SELECT path FROM checkpoints WHERE round=?", "i", round);
    if (!p) return NULL;
    char *full = p[0] == '/' ? ia_strdup(p) : path_join(R->dir, p);
    ia_free(p);
    return full;
}

/* Puts the weights of `round` (0: the base) into R->model. */
static int use_round(run *R, int round, ia_error *err) {
    if (round == R->model_round) return IA_OK;
    char *kind = NULL;
    if (round > 0) ia_store_get_text(R->st, err, &kind, "SELECT kind FROM checkpoints WHERE round=?", "i", round);
    char *path = round > 0 ? checkpoint_path(R, round) : NULL;
    int rc = IA_OK;
    if (round > 0 && (!kind || !path)) {
        rc = ia_error_set(err, IA_ERR_INTERNAL, "%s: round %d has no checkpoint", R->dir, round);
    } else if (kind && !strcmp(kind, "full")) {
        ia_model_free(R->model);
        R->model = ia_model_load(path, err);
        if (!R->model) rc = err->code;
    } else {
        if (R->model_round > 0) {
            char *prev = NULL;
            ia_store_get_text(R->st, NULL, &prev, "SELECT kind FROM checkpoints WHERE round=?", "i", R->model_round);
            if (prev && !strcmp(prev, "full")) {
                ia_model_free(R->model);
                R->model = ia_model_load(R->cfg.base, err);
                if (!R->model) rc = err->code;
            }
            ia_free(prev);
        }
        if (rc == IA_OK) {
            ia_model_lora_clear(R->model);
            /* each round's adapter already holds the earlier rounds (training continues from
               them), so only the latest one is applied */
            if (round > 0) rc = ia_model_lora_add(R->model, path, 1.0f, err);
        }
    }
    ia_free(kind);
    ia_free(path);
    if (rc == IA_OK) R->model_round = round;
    return rc;
}

static int rounds_before(run *R, int batch) {
    int64_t v = 0;
    ia_store_get_i64(R->st, NULL, &v, NULL, "SELECT count(*) FROM checkpoints WHERE batch < ?", "i", batch);
    return (int)v;
}

/* ---- judging ---- */
typedef struct judge_item {
    const char *prompt;   /* the prompt as the user wrote it */
    const char *answer;
} judge_item;

typedef struct judged {
    ia_verdict rules, llm, combined;
    bool has_rules, has_llm;
    char call_key[65];
} judged;

static void judged_clear(judged *j, int n) {
    for (int i = 0; i < n; i++) {
        ia_verdict_clear(&j[i].rules);
        ia_verdict_clear(&j[i].llm);
        ia_verdict_clear(&j[i].combined);
    }
}

/* Active constitutions of the registry (what the improved judge and proposer are shown). */
static int registry_texts(run *R, char ***out, int *n) {
    *out = NULL;
    *n = 0;
    ia_store_lock(R->st);
    sqlite3_stmt *q = ia_store_prepare(R->st, NULL, "SELECT text FROM constitutions WHERE merged_into IS NULL ORDER BY id", "");
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        *out = ia_realloc(*out, sizeof(char *) * (size_t)(*n + 1));
        (*out)[(*n)++] = ia_store_col_text(q, 0);
    }
    sqlite3_finalize(q);
    ia_store_unlock(R->st);
    return IA_OK;
}

static void free_strs(char **s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) ia_free(s[i]);
    ia_free(s);
}

/* Judges n items with the configured judges. show_principles: list the registry to the LLM judge
 * (not for the before/after measurement, whose judge must not change between the two). */
static int judge_items(run *R, const judge_item *items, int n, bool show_principles, judged *out, ia_error *err) {
    memset(out, 0, sizeof *out * (size_t)n);
    if (R->use_rules)
        for (int i = 0; i < n; i++) {
            if (ia_rules_judge(R->rules, items[i].prompt, items[i].answer, &out[i].rules, err) != IA_OK) return err->code;
            out[i].has_rules = true;
        }
    if (R->use_llm && n > 0) {
        char **pr = NULL;
        int npr = 0;
        if (show_principles && R->cfg.registry && R->jstyle == IA_STYLE_IMPROVED) registry_texts(R, &pr, &npr);
        ia_msgs *msgs = ia_calloc((size_t)n, sizeof *msgs);
        ia_teacher_req *reqs = ia_calloc((size_t)n, sizeof *reqs);
        ia_teacher_res *res = ia_calloc((size_t)n, sizeof *res);
        ia_client_format fmt = IA_CLIENT_FORMAT_NONE;
        if (R->jstyle == IA_STYLE_IMPROVED) {
            if (!strcmp(R->cfg.judge_format, "json_object")) fmt = IA_CLIENT_FORMAT_JSON_OBJECT;
            else if (!strcmp(R->cfg.judge_format, "json_schema")) fmt = IA_CLIENT_FORMAT_JSON_SCHEMA;
        }
        for (int i = 0; i < n; i++) {
            ia_judge_messages(R->jstyle, items[i].prompt, items[i].answer, (const char *const *)pr, npr, &msgs[i]);
            reqs[i] = (ia_teacher_req){&msgs[i], R->cfg.judge_max_tokens, fmt, ia_judge_verdict_schema()};
        }
        int rc = ia_teacher_run(R->judge_t, "judge", reqs, n, res, progress, R, err);
        for (int i = 0; i < n && rc == IA_OK; i++) {
            memcpy(out[i].call_key, res[i].call_key, 65);
            out[i].has_llm = true;
            /* a reply with content is read the same way whether it comes from the server now or from
               the store (where a reply not understood is already marked unusable) */
            if (res[i].content) {
                ia_judge_parse(R->jstyle, res[i].content, &out[i].llm);
                if (!out[i].llm.usable) {
                    ia_buf b = {0};
                    ia_buf_puts(&b, "unusable judge reply: ");
                    const char *c = res[i].content ? res[i].content : "";
                    size_t l = strlen(c);
                    ia_buf_append(&b, c, l > 120 ? 120 : l);
                    out[i].llm.reason = ia_buf_take(&b);
                    ia_store_exec(R->st, NULL,
                                  "UPDATE teacher_calls SET status='unusable', error='reply not understood as a verdict'"
                                  " WHERE call_key=? AND status='ok'",
                                  "s", res[i].call_key);
                }
            } else {
                ia_buf b = {0};
                ia_buf_printf(&b, "teacher reply %s: %s", ia_call_status_name(res[i].status), res[i].error ? res[i].error : "");
                out[i].llm.reason = ia_buf_take(&b);
            }
        }
        for (int i = 0; i < n; i++) {
            ia_msgs_clear(&msgs[i]);
            ia_teacher_res_clear(&res[i]);
        }
        ia_free(msgs);
        ia_free(reqs);
        ia_free(res);
        free_strs(pr, npr);
        if (rc != IA_OK) return rc;
    }
    ia_judge_combine mode = !strcmp(R->cfg.combine, "all") ? IA_COMBINE_ALL : IA_COMBINE_ANY;
    for (int i = 0; i < n; i++) {
        const ia_verdict *vs[2] = {out[i].has_rules ? &out[i].rules : NULL, out[i].has_llm ? &out[i].llm : NULL};
        ia_verdict_combine(vs, 2, mode, &out[i].combined);
    }
    return IA_OK;
}

/* Writes a judged item's verdict rows (inside the caller's transaction). */
static int store_verdicts(run *R, const char *subject, int batch, int idx, int cand, const judged *j, ia_error *err) {
    int rc = IA_OK;
    const char *sql = "INSERT OR IGNORE INTO verdicts(subject, batch, idx, cand, judge, flagged, usable, principle, reason,"
                      " call_key) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    if (j->has_rules)
        rc = ia_store_exec(R->st, err, sql, "siiisbbsss", subject, batch, idx, cand, "rules", j->rules.flagged, j->rules.usable,
                           j->rules.principle, j->rules.reason, (const char *)NULL);
    if (rc == IA_OK && j->has_llm)
        rc = ia_store_exec(R->st, err, sql, "siiisbbsss", subject, batch, idx, cand, "llm", j->llm.flagged, j->llm.usable,
                           j->llm.principle, j->llm.reason, j->call_key);
    if (rc == IA_OK)
        rc = ia_store_exec(R->st, err, sql, "siiisbbsss", subject, batch, idx, cand, "combined", j->combined.flagged,
                           j->combined.usable, j->combined.principle, j->combined.reason, (const char *)NULL);
    return rc;
}

/* ---- stages ---- */
static void batch_range(run *R, int b, int *first, int *count) {
    *first = b * R->cfg.batch_size;
    *count = R->n_train - *first < R->cfg.batch_size ? R->n_train - *first : R->cfg.batch_size;
}

static int stage_redteam(run *R, int b, ia_error *err) {
    int first, count;
    batch_range(R, b, &first, &count);
    int round = rounds_before(R, b);
    int rc = use_round(R, round, err);
    if (rc != IA_OK) return rc;
    stage_begin(R, "redteam", b);
    ia_completion *out = ia_calloc((size_t)count, sizeof *out);
    ia_sampling s = redteam_sampling(&R->cfg);
    s.seed = mix_seed(R->cfg.seed, 1, b);
    rc = generate(R, (const char *const *)(R->train_pres + first), count, s, out, err);
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        for (int i = 0; i < count && rc == IA_OK; i++)
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO answers(batch, prompt_idx, text, n_tokens, finish) VALUES(?, ?, ?, ?, ?)",
                               "iisis", b, first + i, out[i].text, out[i].n_tokens, finish_name(out[i].finish));
        if (rc == IA_OK)
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO batches(batch, first_idx, n_prompts, adapter_round) VALUES(?, ?, ?, ?)",
                               "iiii", b, first, count, round);
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, b, "redteam", NULL, err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    for (int i = 0; i < count; i++) ia_completion_clear(&out[i]);
    ia_free(out);
    if (rc == IA_OK) logf_(R, "batch %d/%d: red-team: %d answers (model: %s)", b + 1, R->n_batches, count,
                           round ? "base + round adapter" : "base");
    return rc;
}

/* Loads (prompt_idx, text) rows of a query into parallel arrays. */
static int load_texts(run *R, const char *sql, int batch, int **idx, char ***texts, int *n) {
    *idx = NULL;
    *texts = NULL;
    *n = 0;
    ia_store_lock(R->st);
    sqlite3_stmt *q = ia_store_prepare(R->st, NULL, sql, "i", batch);
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        *idx = ia_realloc(*idx, sizeof(int) * (size_t)(*n + 1));
        *texts = ia_realloc(*texts, sizeof(char *) * (size_t)(*n + 1));
        (*idx)[*n] = sqlite3_column_int(q, 0);
        (*texts)[*n] = ia_store_col_text(q, 1);
        (*n)++;
    }
    sqlite3_finalize(q);
    ia_store_unlock(R->st);
    return IA_OK;
}

static int stage_judge(run *R, int b, ia_error *err) {
    stage_begin(R, "judge", b);
    int *idx, n;
    char **ans;
    load_texts(R, "SELECT prompt_idx, text FROM answers WHERE batch=? ORDER BY prompt_idx", b, &idx, &ans, &n);
    judge_item *items = ia_calloc((size_t)(n ? n : 1), sizeof *items);
    for (int i = 0; i < n; i++) items[i] = (judge_item){R->train[idx[i]].text, ans[i]};
    judged *j = ia_calloc((size_t)(n ? n : 1), sizeof *j);
    int rc = judge_items(R, items, n, true, j, err);
    int flagged = 0, unusable = 0;
    for (int i = 0; i < n && rc == IA_OK; i++) {
        flagged += j[i].combined.flagged;
        unusable += j[i].has_llm && !j[i].llm.usable;
    }
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        for (int i = 0; i < n && rc == IA_OK; i++) rc = store_verdicts(R, "answer", b, idx[i], 0, &j[i], err);
        if (rc == IA_OK)
            rc = ia_store_exec(R->st, err, "UPDATE batches SET n_flagged=?, n_unusable=? WHERE batch=?", "iii", flagged, unusable, b);
        if (rc == IA_OK)
            rc = ia_store_exec(R->st, err, "INSERT OR IGNORE INTO metrics(name, phase, batch, value, n) VALUES('flag_rate', 'redteam', ?, ?, ?)",
                               "idi", b, n ? (double)flagged / n : 0.0, n);
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, b, "judge", NULL, err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    if (rc == IA_OK) {
        if (unusable) logf_(R, "batch %d/%d: judge: %d/%d flagged (%d unusable teacher replies recorded)", b + 1, R->n_batches, flagged, n, unusable);
        else logf_(R, "batch %d/%d: judge: %d/%d flagged", b + 1, R->n_batches, flagged, n);
    }
    judged_clear(j, n);
    ia_free(j);
    ia_free(items);
    free_strs(ans, n);
    ia_free(idx);
    return rc;
}

/* Adds a constitution to the registry (inside the caller's transaction) and records that the
 * flagged answer (batch, prompt_idx) produced it. Rule constitutions are one entry per rule;
 * teacher proposals are merged into an existing entry when their token-set Jaccard similarity
 * reaches the threshold (kept as a row of their own, merged_into the entry). Returns the id of the
 * active entry. */
static int64_t registry_add(run *R, const char *text, const char *source, int batch, const int *pidx, int n_pidx,
                            const char *call_key, ia_error *err) {
    int64_t id = 0;
    bool found = false;
    if (!strncmp(source, "rules:", 6)) {
        ia_store_get_i64(R->st, err, &id, &found, "SELECT id FROM constitutions WHERE source=? AND merged_into IS NULL", "s", source);
    } else if (R->cfg.registry) {
        double best = -1;
        int64_t best_id = 0;
        ia_store_lock(R->st);
        sqlite3_stmt *q = ia_store_prepare(R->st, err, "SELECT id, text FROM constitutions WHERE merged_into IS NULL ORDER BY id", "");
        while (q && sqlite3_step(q) == SQLITE_ROW) {
            double sim = ia_text_jaccard(text, (const char *)sqlite3_column_text(q, 1));
            if (sim > best) {
                best = sim;
                best_id = sqlite3_column_int64(q, 0);
            }
        }
        sqlite3_finalize(q);
        ia_store_unlock(R->st);
        char *best_text = NULL;
        if (best_id) ia_store_get_text(R->st, NULL, &best_text, "SELECT text FROM constitutions WHERE id=?", "I", best_id);
        bool same_text = best_text && !strcasecmp(best_text, text);
        ia_free(best_text);
        if (best_id && same_text) {
            id = best_id; /* proposed again word for word: only the provenance grows */
            found = true;
        } else if (best_id && best >= R->cfg.merge_threshold) {
            /* keep the new wording as a merged row, point provenance at the entry */
            if (ia_store_exec(R->st, err,
                              "INSERT INTO constitutions(text, source, first_batch, merged_into, call_key) VALUES(?, ?, ?, ?, ?)",
                              "ssiIs", text, source, batch, best_id, call_key) != IA_OK)
                return -1;
            ia_store_exec(R->st, err, "UPDATE constitutions SET n_merged = n_merged + 1 WHERE id=?", "I", best_id);
            id = best_id;
            found = true;
        }
    }
    if (!found) {
        if (ia_store_exec(R->st, err, "INSERT INTO constitutions(text, source, first_batch, call_key) VALUES(?, ?, ?, ?)", "ssis",
                          text, source, batch, call_key) != IA_OK)
            return -1;
        id = sqlite3_last_insert_rowid(ia_store_db(R->st));
    }
    for (int i = 0; i < n_pidx; i++)
        if (ia_store_exec(R->st, err,
                          "INSERT OR IGNORE INTO constitution_sources(constitution_id, batch, prompt_idx, proposed) VALUES(?, ?, ?, ?)",
                          "Iiis", id, batch, pidx[i], text) != IA_OK)
            return -1;
    return id;
}

static int add_revise_with(run *R, int batch, int pidx, int64_t cid, ia_error *err) {
    int64_t have = 0;
    bool f;
    ia_store_get_i64(R->st, err, &have, &f, "SELECT 1 FROM revise_with WHERE batch=? AND prompt_idx=? AND constitution_id=?", "iiI",
                     batch, pidx, cid);
    if (f) return IA_OK;
    int64_t ord = 0;
    ia_store_get_i64(R->st, err, &ord, NULL, "SELECT count(*) FROM revise_with WHERE batch=? AND prompt_idx=?", "ii", batch, pidx);
    return ia_store_exec(R->st, err, "INSERT OR IGNORE INTO revise_with(batch, prompt_idx, ord, constitution_id) VALUES(?, ?, ?, ?)",
                         "iiiI", batch, pidx, (int)ord, cid);
}

static int stage_propose(run *R, int b, ia_error *err) {
    stage_begin(R, "propose", b);
    /* flagged answers, with which judge flagged them */
    int n = 0;
    int *pidx = NULL;
    bool *by_rules = NULL;
    char **ans = NULL, **why = NULL;
    ia_store_lock(R->st);
    sqlite3_stmt *q = ia_store_prepare(
        R->st, err,
        "SELECT a.prompt_idx, a.text, c.reason,"
        " (SELECT flagged FROM verdicts v WHERE v.subject='answer' AND v.batch=a.batch AND v.idx=a.prompt_idx AND v.judge='rules')"
        " FROM answers a JOIN verdicts c ON c.subject='answer' AND c.batch=a.batch AND c.idx=a.prompt_idx AND c.judge='combined'"
        " WHERE a.batch=? AND c.flagged=1 ORDER BY a.prompt_idx",
        "i", b);
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        pidx = ia_realloc(pidx, sizeof(int) * (size_t)(n + 1));
        ans = ia_realloc(ans, sizeof(char *) * (size_t)(n + 1));
        why = ia_realloc(why, sizeof(char *) * (size_t)(n + 1));
        by_rules = ia_realloc(by_rules, sizeof(bool) * (size_t)(n + 1));
        pidx[n] = sqlite3_column_int(q, 0);
        ans[n] = ia_store_col_text(q, 1);
        why[n] = sqlite3_column_type(q, 2) == SQLITE_NULL ? NULL : ia_store_col_text(q, 2);
        by_rules[n] = sqlite3_column_int(q, 3) == 1;
        n++;
    }
    sqlite3_finalize(q);
    ia_store_unlock(R->st);
    int rc = IA_OK;
    if (n == 0) {
        rc = ia_store_begin(R->st, err);
        if (rc == IA_OK) rc = ia_store_exec(R->st, err, "UPDATE batches SET skipped=1 WHERE batch=?", "i", b);
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, b, "propose", "nothing flagged: batch skipped", err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
        if (rc == IA_OK) logf_(R, "batch %d/%d: nothing flagged; skipped", b + 1, R->n_batches);
        return rc;
    }
    /* the teacher's proposal for the flagged answers (one request per batch) */
    ia_proposal *props = NULL;
    int n_props = 0, n_shown = 0;
    int *shown_map = ia_calloc((size_t)n, sizeof(int)); /* position in the proposal list -> i */
    char prop_key[65] = "";
    bool prop_unusable = false;
    if (R->prop_t) {
        ia_flagged *fl = ia_calloc((size_t)n, sizeof *fl);
        for (int i = 0; i < n; i++) {
            fl[n_shown] = (ia_flagged){R->train[pidx[i]].text, ans[i], why[i]};
            shown_map[n_shown++] = i;
        }
        if (n_shown > 0) {
            char **ex = NULL;
            int nex = 0;
            if (R->cfg.registry && R->pstyle == IA_STYLE_IMPROVED) registry_texts(R, &ex, &nex);
            ia_msgs msgs;
            ia_propose_messages(R->pstyle, fl, n_shown, (const char *const *)ex, nex, &msgs);
            ia_teacher_req req = {&msgs, R->cfg.proposer_max_tokens, R->pstyle == IA_STYLE_IMPROVED && strcmp(R->cfg.judge_format, "none") ? IA_CLIENT_FORMAT_JSON_OBJECT : IA_CLIENT_FORMAT_NONE, NULL};
            ia_teacher_res res;
            rc = ia_teacher_run(R->prop_t, "propose", &req, 1, &res, progress, R, err);
            if (rc == IA_OK) {
                memcpy(prop_key, res.call_key, 65);
                if (res.content) n_props = ia_propose_parse(R->pstyle, res.content, n_shown, &props);
                if (n_props == 0) {
                    prop_unusable = true;
                    ia_store_exec(R->st, NULL,
                                  "UPDATE teacher_calls SET status='unusable', error='no constitution in the reply'"
                                  " WHERE call_key=? AND status='ok'",
                                  "s", res.call_key);
                }
            }
            ia_teacher_res_clear(&res);
            ia_msgs_clear(&msgs);
            free_strs(ex, nex);
        }
        ia_free(fl);
    }
    int with_const = 0;
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        /* rule constitutions: one per matched rule (re-judged here: the rules judge is pure) */
        for (int i = 0; i < n && rc == IA_OK; i++) {
            if (!by_rules[i]) continue;
            ia_verdict v;
            ia_rules_judge(R->rules, R->train[pidx[i]].text, ans[i], &v, NULL);
            for (int k = 0; k < v.n_rules && rc == IA_OK; k++) {
                char src[160];
                snprintf(src, sizeof src, "rules:%s", ia_rules_name(R->rules, v.rules[k]));
                int64_t id = registry_add(R, ia_rules_constitution(R->rules, v.rules[k]), src, b, &pidx[i], 1, NULL, err);
                rc = id < 0 ? IA_ERR_DB : add_revise_with(R, b, pidx[i], id, err);
            }
            ia_verdict_clear(&v);
        }
        for (int p = 0; p < n_props && rc == IA_OK; p++) {
            int *who = ia_calloc((size_t)(n_shown ? n_shown : 1), sizeof(int));
            int nw = 0;
            if (props[p].n_answers == 0)
                for (int k = 0; k < n_shown; k++) who[nw++] = pidx[shown_map[k]];
            else
                for (int k = 0; k < props[p].n_answers; k++) who[nw++] = pidx[shown_map[props[p].answers[k]]];
            int64_t id = registry_add(R, props[p].text, "teacher", b, who, nw, prop_key, err);
            for (int k = 0; k < nw && rc == IA_OK; k++) rc = id < 0 ? IA_ERR_DB : add_revise_with(R, b, who[k], id, err);
            ia_free(who);
        }
        int64_t v = 0;
        ia_store_get_i64(R->st, err, &v, NULL, "SELECT count(DISTINCT prompt_idx) FROM revise_with WHERE batch=?", "i", b);
        with_const = (int)v;
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, b, "propose", prop_unusable ? "teacher proposal unusable" : NULL, err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    if (rc == IA_OK)
        logf_(R, "batch %d/%d: propose: constitutions for %d flagged answer%s%s", b + 1, R->n_batches, with_const,
              with_const == 1 ? "" : "s", prop_unusable ? " (the teacher's proposal was unusable; recorded)" : "");
    ia_proposals_free(props, n_props);
    ia_free(shown_map);
    free_strs(ans, n);
    free_strs(why, n);
    ia_free(pidx);
    ia_free(by_rules);
    return rc;
}

static int stage_revise(run *R, int b, ia_error *err) {
    stage_begin(R, "revise", b);
    /* flagged prompts with their constitutions, in order (joined with '\x1f' here, split below) */
    int n = 0;
    int *pidx = NULL;
    char **cons = NULL;
    ia_store_lock(R->st);
    sqlite3_stmt *q = ia_store_prepare(R->st, err,
                                       "SELECT r.prompt_idx, c.text FROM revise_with r JOIN constitutions c ON c.id=r.constitution_id"
                                       " WHERE r.batch=? ORDER BY r.prompt_idx, r.ord",
                                       "i", b);
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        int pi = sqlite3_column_int(q, 0);
        const char *text = (const char *)sqlite3_column_text(q, 1);
        if (n == 0 || pidx[n - 1] != pi) {
            pidx = ia_realloc(pidx, sizeof(int) * (size_t)(n + 1));
            cons = ia_realloc(cons, sizeof(char *) * (size_t)(n + 1));
            pidx[n] = pi;
            cons[n] = ia_strdup(text);
            n++;
        } else {
            ia_buf b2 = {0};
            ia_buf_printf(&b2, "%s\x1f%s", cons[n - 1], text);
            ia_free(cons[n - 1]);
            cons[n - 1] = ia_buf_take(&b2);
        }
    }
    sqlite3_finalize(q);
    ia_store_unlock(R->st);
    int N = R->cfg.revise_samples;
    int total = n * N, rc = IA_OK;
    char **prompts = ia_calloc((size_t)(total ? total : 1), sizeof(char *));
    for (int i = 0; i < n && rc == IA_OK; i++) {
        const char *parts[32];
        int np = 0;
        char *s = cons[i];
        parts[np++] = s;
        for (char *p = s; *p && np < 32; p++)
            if (*p == '\x1f') {
                *p = 0;
                parts[np++] = p + 1;
            }
        char *text = ia_present(&R->pres, &R->train[pidx[i]], parts, np, R->cfg.revise_style, err);
        if (!text) {
            rc = err->code ? err->code : IA_ERR_NOMEM;
            break;
        }
        for (int c = 0; c < N; c++) prompts[i * N + c] = ia_strdup(text);
        ia_free(text);
    }
    ia_completion *out = ia_calloc((size_t)(total ? total : 1), sizeof *out);
    if (rc == IA_OK && total > 0) {
        rc = use_round(R, rounds_before(R, b), err);
        ia_sampling s = redteam_sampling(&R->cfg);
        if (R->cfg.revise_temperature >= 0) s.temperature = R->cfg.revise_temperature;
        s.seed = mix_seed(R->cfg.seed, 2, b);
        if (rc == IA_OK) rc = generate(R, (const char *const *)prompts, total, s, out, err);
    }
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        for (int i = 0; i < total && rc == IA_OK; i++)
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO revisions(batch, prompt_idx, cand, prompt, text, n_tokens, finish)"
                               " VALUES(?, ?, ?, ?, ?, ?, ?)",
                               "iiissis", b, pidx[i / N], i % N, prompts[i], out[i].text, out[i].n_tokens, finish_name(out[i].finish));
        if (rc == IA_OK) rc = ia_store_exec(R->st, err, "UPDATE batches SET n_revised=? WHERE batch=?", "ii", n, b);
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, b, "revise", NULL, err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    if (rc == IA_OK) logf_(R, "batch %d/%d: revise: %d prompt%s x %d sample%s", b + 1, R->n_batches, n, n == 1 ? "" : "s", N, N == 1 ? "" : "s");
    for (int i = 0; i < total; i++) {
        ia_free(prompts[i]);
        ia_completion_clear(&out[i]);
    }
    ia_free(prompts);
    ia_free(out);
    free_strs(cons, n);
    ia_free(pidx);
    return rc;
}

static int stage_rejudge(run *R, int b, ia_error *err) {
    stage_begin(R, "rejudge", b);
    int n = 0;
    int *pidx = NULL, *cand = NULL;
    char **text = NULL;
    ia_store_lock(R->st);
    sqlite3_stmt *q = ia_store_prepare(R->st, err, "SELECT prompt_idx, cand, text FROM revisions WHERE batch=? ORDER BY prompt_idx, cand",
                                       "i", b);
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        pidx = ia_realloc(pidx, sizeof(int) * (size_t)(n + 1));
        cand = ia_realloc(cand, sizeof(int) * (size_t)(n + 1));
        text = ia_realloc(text, sizeof(char *) * (size_t)(n + 1));
        pidx[n] = sqlite3_column_int(q, 0);
        cand[n] = sqlite3_column_int(q, 1);
        text[n] = ia_store_col_text(q, 2);
        n++;
    }
    sqlite3_finalize(q);
    ia_store_unlock(R->st);
    int rc = IA_OK;
    judged *j = ia_calloc((size_t)(n ? n : 1), sizeof *j);
    bool *pass = ia_calloc((size_t)(n ? n : 1), sizeof(bool));
    if (R->cfg.rejudge && n > 0) {
        judge_item *items = ia_calloc((size_t)n, sizeof *items);
        for (int i = 0; i < n; i++) items[i] = (judge_item){R->train[pidx[i]].text, text[i]};
        rc = judge_items(R, items, n, true, j, err);
        ia_free(items);
        for (int i = 0; i < n; i++) pass[i] = j[i].combined.usable && !j[i].combined.flagged;
    } else {
        for (int i = 0; i < n; i++) pass[i] = true; /* the released code trains on every revision */
    }
    /* an empty revision says nothing wrong and teaches nothing (and would teach silence): never
       chosen, whatever the judge says */
    for (int i = 0; i < n; i++) {
        const char *p = text[i];
        while (*p && isspace((unsigned char)*p)) p++;
        if (!*p) pass[i] = false;
    }
    /* best of N: the first candidate (in sample order) that passes */
    int chosen = 0, prompts_n = 0;
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        for (int i = 0; i < n && rc == IA_OK; i++) {
            if (R->cfg.rejudge) rc = store_verdicts(R, "revision", b, pidx[i], cand[i], &j[i], err);
            bool first_of_prompt = i == 0 || pidx[i - 1] != pidx[i];
            prompts_n += first_of_prompt;
            bool taken = false;
            for (int k = i - 1; k >= 0 && pidx[k] == pidx[i]; k--) taken |= pass[k];
            if (pass[i] && !taken && rc == IA_OK) {
                rc = ia_store_exec(R->st, err, "UPDATE revisions SET chosen=1 WHERE batch=? AND prompt_idx=? AND cand=?", "iii", b,
                                   pidx[i], cand[i]);
                chosen++;
            }
        }
        if (rc == IA_OK) rc = ia_store_exec(R->st, err, "UPDATE batches SET n_passed=? WHERE batch=?", "ii", chosen, b);
        if (rc == IA_OK && R->cfg.rejudge && prompts_n > 0)
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO metrics(name, phase, batch, value, n) VALUES('revision_pass_rate', 'revise', ?, ?, ?)",
                               "idi", b, (double)chosen / prompts_n, prompts_n);
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, b, "rejudge", R->cfg.rejudge ? NULL : "not re-judged (every revision kept)", err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    if (rc == IA_OK && R->cfg.rejudge)
        logf_(R, "batch %d/%d: re-judge: %d of %d flagged prompts have a revision that passes", b + 1, R->n_batches, chosen, prompts_n);
    judged_clear(j, n);
    ia_free(j);
    ia_free(pass);
    free_strs(text, n);
    ia_free(pidx);
    ia_free(cand);
    return rc;
}

/* The training example of a chosen revision, in the three forms the outputs and the trainer use. */
static char *example_messages_json(const ia_prompt *p, const char *completion) {
    json_t *msgs = p->messages ? json_loads(p->messages, 0, NULL) : NULL;
    if (!msgs) {
        msgs = json_array();
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", p->text));
    }
    json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "assistant", "content", completion));
    char *s = json_dumps(msgs, JSON_COMPACT);
    json_decref(msgs);
    char *out = ia_strdup(s ? s : "[]");
    free(s);
    return out;
}

static int stage_train(run *R, int b, ia_error *err) {
    stage_begin(R, "train", b);
    /* this batch's chosen revisions */
    int n = 0;
    int *pidx = NULL, *cand = NULL;
    char **text = NULL;
    load_texts(R, "SELECT prompt_idx, text FROM revisions WHERE batch=? AND chosen=1 ORDER BY prompt_idx", b, &pidx, &text, &n);
    cand = ia_calloc((size_t)(n ? n : 1), sizeof(int));
    for (int i = 0; i < n; i++) {
        int64_t c = 0;
        ia_store_get_i64(R->st, NULL, &c, NULL, "SELECT cand FROM revisions WHERE batch=? AND prompt_idx=? AND chosen=1", "ii", b, pidx[i]);
        cand[i] = (int)c;
    }
    int64_t prev_rounds = 0;
    ia_store_get_i64(R->st, NULL, &prev_rounds, NULL, "SELECT count(*) FROM checkpoints", "");
    int round = (int)prev_rounds + 1;
    bool train = n > 0 && strcmp(R->cfg.train_method, "none");
    int rc = IA_OK;
    char rel[64] = "", sha[65] = "";
    int64_t bytes = 0;
    ia_train_result tres = {0};
    double secs = 0;
    bool full = !strcmp(R->cfg.train_method, "full");
    char *prev = NULL;
    if (train) {
        /* the round's data: (original prompt as the model sees it -> revision), no constitution */
        ia_buf data = {0};
        ia_store_lock(R->st);
        sqlite3_stmt *q = NULL;
        if (!strcmp(R->cfg.train_data, "all"))
            q = ia_store_prepare(R->st, err, "SELECT prompt_idx, text FROM revisions WHERE chosen=1 AND batch<=? ORDER BY batch, prompt_idx", "i", b);
        else
            q = ia_store_prepare(R->st, err, "SELECT prompt_idx, text FROM revisions WHERE chosen=1 AND batch=? ORDER BY prompt_idx", "i", b);
        while (q && sqlite3_step(q) == SQLITE_ROW) {
            int pi = sqlite3_column_int(q, 0);
            const char *completion = (const char *)sqlite3_column_text(q, 1);
            json_t *o;
            if (R->pres.mode == IA_PRESENT_CHAT) {
                char *mj = example_messages_json(&R->train[pi], completion);
                o = json_pack("{s:o}", "messages", json_loads(mj, 0, NULL));
                ia_free(mj);
            } else {
                o = json_pack("{s:s,s:s}", "prompt", R->train_pres[pi], "completion", completion);
            }
            char *line = json_dumps(o, JSON_COMPACT);
            ia_buf_printf(&data, "%s\n", line);
            free(line);
            json_decref(o);
        }
        sqlite3_finalize(q);
        ia_store_unlock(R->st);
        char dname[64];
        snprintf(dname, sizeof dname, "train/round-%03d.jsonl", round);
        char *dpath = path_join(R->dir, dname);
        rc = ia_write_file_atomic(dpath, data.data ? data.data : "", data.len, err);
        ia_buf_free(&data);
        snprintf(rel, sizeof rel, "%s/round-%03d.gguf", full ? "models" : "adapters", round);
        if (full) {
            char *md = path_join(R->dir, "models");
            mkdir(md, 0755);
            ia_free(md);
        }
        char *opath = path_join(R->dir, rel);
        char lname[64];
        snprintf(lname, sizeof lname, "train/round-%03d.log.jsonl", round);
        char *lpath = path_join(R->dir, lname);
        if (R->cfg.train_continue && round > 1) prev = checkpoint_path(R, round - 1);
        ia_train_opts o = ia_train_opts_default();
        o.base_path = full && prev ? prev : R->cfg.base;
        o.data_path = dpath;
        o.out_path = opath;
        o.init_adapter = !full ? prev : NULL;
        o.method = full ? IA_TRAIN_FULL : IA_TRAIN_LORA;
        o.lora_rank = R->cfg.lora_rank;
        o.lora_alpha = R->cfg.lora_alpha;
        o.lora_targets = R->cfg.lora_targets;
        o.epochs = R->cfg.epochs;
        o.batch_size = R->cfg.train_batch;
        o.grad_accum = R->cfg.grad_accum;
        o.lr = R->cfg.lr;
        o.weight_decay = R->cfg.weight_decay;
        o.warmup_ratio = R->cfg.warmup;
        o.schedule = !strcmp(R->cfg.schedule, "constant") ? IA_LR_CONSTANT : !strcmp(R->cfg.schedule, "linear") ? IA_LR_LINEAR : IA_LR_COSINE;
        o.max_len = R->cfg.max_len;
        o.bf16 = !strcmp(R->cfg.train_compute, "bf16");
        if (o.bf16 && !ia_cpu_has_bf16_dot() && round == 1)
            logf_(R, "note: this CPU has no AVX512_BF16: --train-compute bf16 is emulated %s",
                  strcmp(ia_cpu_kernel_name(), "scalar") ? "with AVX2 FMAs (the same numbers, slower than f32)"
                                                         : "in plain C (the same numbers, many times slower than f32)");
        o.seed = mix_seed(R->cfg.seed, 4, b);
        /* the data is in the form the model was prompted with: through its template in chat mode,
           else the presented prompt and the completion as plain text (never the model's template) */
        o.chat_template = R->pres.mode == IA_PRESENT_CHAT ? ia_chat_template_name(R->pres.tmpl) : "plain";
        o.log_path = lpath;
        o.progress = train_progress;
        o.progress_ud = R;
        /* no optimizer checkpoints: a round interrupted by a crash is trained again from its start,
           which gives the same bytes (training is deterministic), so a resumed run equals an
           uninterrupted one */
        o.checkpoint_path = NULL;
        double t0 = ia_time_now();
        if (rc == IA_OK) {
            unlink(lpath); /* a crashed attempt's log would otherwise be appended to */
            rc = ia_train(&o, &tres, err);
            if (rc != IA_OK) ia_error_prefix(err, "training round %d", round);
        }
        secs = ia_time_now() - t0;
        if (rc == IA_OK) rc = ia_file_sha256(opath, sha, &bytes, err);
        ia_free(dpath);
        ia_free(opath);
        ia_free(lpath);
    }
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        for (int i = 0; i < n && rc == IA_OK; i++) {
            char *mj = example_messages_json(&R->train[pidx[i]], text[i]);
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO train_examples(batch, prompt_idx, cand, round, prompt, completion, messages)"
                               " VALUES(?, ?, ?, ?, ?, ?, ?)",
                               "iiiisss", b, pidx[i], cand[i], train ? round : 0, R->train_pres[pidx[i]], text[i], mj);
            ia_free(mj);
        }
        if (rc == IA_OK && train) {
            char init[64] = "";
            if (prev) snprintf(init, sizeof init, "%s/round-%03d.gguf", full ? "models" : "adapters", round - 1);
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO checkpoints(round, batch, kind, path, sha256, bytes, init, n_examples, steps,"
                               " first_loss, final_loss, seconds) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               "iisssIsiiddd", round, b, full ? "full" : "lora", rel, sha, bytes, init[0] ? init : NULL, n,
                               tres.steps, (double)tres.first_loss, (double)tres.final_loss, secs);
        }
        if (rc == IA_OK)
            rc = ia_store_exec(R->st, err, "UPDATE batches SET n_trained=?, trained_round=? WHERE batch=?", "iii", train ? n : 0,
                               train ? round : 0, b);
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, b, "train", train ? NULL : "no example to train on", err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    if (rc == IA_OK) {
        if (train)
            logf_(R, "batch %d/%d: train: round %d on %d example%s, loss %.3f -> %.3f (%.1f s)", b + 1, R->n_batches, round, n,
                  n == 1 ? "" : "s", (double)tres.first_loss, (double)tres.final_loss, secs);
        else
            logf_(R, "batch %d/%d: train: nothing to train on", b + 1, R->n_batches);
    }
    ia_free(prev);
    free_strs(text, n);
    ia_free(pidx);
    ia_free(cand);
    return rc;
}

/* The held-out measurement: every held-out prompt answered measure_samples times with the red-team
 * decoding and the same seeds before and after, judged without the registry (the same judge both
 * times). */
static int stage_eval(run *R, const char *phase, int round, ia_error *err) {
    /* a literal: R->stage outlives this call (error messages name it) */
    const char *stage = !strcmp(phase, "before") ? "eval_before" : "eval_after";
    stage_begin(R, stage, -1);
    int rc = use_round(R, round, err);
    if (rc != IA_OK) return rc;
    int S = R->cfg.measure_samples, total = R->n_held * S;
    char **prompts = ia_calloc((size_t)total, sizeof(char *));
    for (int i = 0; i < total; i++) prompts[i] = R->held_pres[i / S];
    ia_completion *out = ia_calloc((size_t)total, sizeof *out);
    ia_sampling s = redteam_sampling(&R->cfg);
    s.seed = mix_seed(R->cfg.seed, 3, 0);
    rc = generate(R, (const char *const *)prompts, total, s, out, err);
    judged *j = ia_calloc((size_t)total, sizeof *j);
    judge_item *items = ia_calloc((size_t)total, sizeof *items);
    for (int i = 0; i < total; i++) items[i] = (judge_item){R->held[i / S].text, out[i].text ? out[i].text : ""};
    if (rc == IA_OK) rc = judge_items(R, items, total, false, j, err);
    int flagged = 0, usable = 0;
    for (int i = 0; i < total && rc == IA_OK; i++) {
        usable += j[i].combined.usable;
        flagged += j[i].combined.usable && j[i].combined.flagged;
    }
    double rate = usable ? (double)flagged / usable : 0;
    /* fluency: the base model's mean negative log-likelihood per token of the answers. A drop in
       violations bought by degenerate text shows up here as a rise. */
    double nll = 0;
    long nll_tokens = 0;
    if (rc == IA_OK && R->cfg.measure_fluency) {
        ia_score_request *sq = ia_calloc((size_t)total, sizeof *sq);
        ia_score_result *sr = ia_calloc((size_t)total, sizeof *sr);
        int ns = 0;
        for (int i = 0; i < total; i++)
            if (out[i].text && out[i].text[0]) sq[ns++] = (ia_score_request){prompts[i], out[i].text};
        rc = use_round(R, 0, err);
        if (rc == IA_OK && ns > 0) rc = ia_score(R->model, sq, ns, sr, err);
        for (int i = 0; i < ns && rc == IA_OK; i++) {
            nll -= sr[i].logprob;
            nll_tokens += sr[i].n_tokens;
        }
        for (int i = 0; i < ns; i++) ia_score_result_clear(&sr[i]);
        ia_free(sq);
        ia_free(sr);
    }
    const char *subject = stage;
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        for (int i = 0; i < total && rc == IA_OK; i++) {
            rc = ia_store_exec(R->st, err,
                               "INSERT OR IGNORE INTO eval_answers(phase, idx, sample, text, n_tokens, finish) VALUES(?, ?, ?, ?, ?, ?)",
                               "siisis", phase, i / S, i % S, out[i].text, out[i].n_tokens, finish_name(out[i].finish));
            if (rc == IA_OK) rc = store_verdicts(R, subject, -1, i / S, i % S, &j[i], err);
        }
        if (rc == IA_OK)
            rc = ia_store_exec(R->st, err, "INSERT OR IGNORE INTO metrics(name, phase, batch, value, n) VALUES('violation_rate', ?, -1, ?, ?)",
                               "sdi", phase, rate, usable);
        if (rc == IA_OK)
            rc = ia_store_exec(R->st, err, "INSERT OR IGNORE INTO metrics(name, phase, batch, value, n) VALUES('violations', ?, -1, ?, ?)",
                               "sdi", phase, (double)flagged, usable);
        if (rc == IA_OK && nll_tokens > 0)
            rc = ia_store_exec(R->st, err, "INSERT OR IGNORE INTO metrics(name, phase, batch, value, n) VALUES('base_nll_per_token', ?, -1, ?, ?)",
                               "sdi", phase, nll / (double)nll_tokens, (int)nll_tokens);
        if (rc == IA_OK) rc = ia_store_stage_mark(R->st, -1, stage, NULL, err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    if (rc == IA_OK)
        logf_(R, "held-out violation rate %s alignment: %.1f%% (%d of %d answers to %d unseen prompts)%s", phase, 100 * rate, flagged,
              usable, R->n_held, "");
    if (rc == IA_OK && nll_tokens > 0)
        logf_(R, "fluency %s alignment: %.3f nats/token (the base model's negative log-likelihood of the answers)", phase,
              nll / (double)nll_tokens);
    judged_clear(j, total);
    ia_free(j);
    ia_free(items);
    for (int i = 0; i < total; i++) ia_completion_clear(&out[i]);
    ia_free(out);
    ia_free(prompts);
    return rc;
}

static void task_progress(void *ud, const char *task, int done, int total) {
    (void)task;
    progress(ud, done, total);
}

/* The evaluation tasks of --eval (src/eval) on the base model and on the final one; their headline
 * numbers go to the metrics table (name "<task>/<metric>", batch = the round), every item to
 * DIR/eval/. harmful_rate is judged by the run's rules when it has some. */
static int stage_tasks(run *R, const char *phase, int round, ia_error *err) {
    const char *stage = !strcmp(phase, "before") ? "tasks_before" : "tasks_after";
    stage_begin(R, stage, -1);
    int rc = use_round(R, round, err);
    if (rc != IA_OK) return rc;
    ia_eval_config ec = ia_eval_config_default();
    ia_eval_judge *harm = NULL;
    char *rules_copy = path_join(R->dir, "rules.json");
    if (R->rules && access(rules_copy, F_OK) == 0) {
        harm = ia_eval_judge_rules_new(rules_copy, err);
        if (!harm) rc = err->code;
    }
    ia_free(rules_copy);
    ec.harm_judge = harm;
    if (R->cfg.parallel > 0) ec.n_parallel = R->cfg.parallel;
    ec.limit = R->cfg.eval_limit;
    ec.progress = task_progress;
    ec.progress_ud = R;
    char *summary = NULL;
    if (rc == IA_OK) rc = ia_eval_for_run(R->model, &ec, R->cfg.eval, R->st, R->dir, phase, round, &summary, err);
    if (rc == IA_OK) rc = ia_store_stage_mark(R->st, -1, stage, summary, err);
    if (rc == IA_OK) logf_(R, "evaluations %s alignment: %s", phase, summary ? summary : "");
    ia_free(summary);
    ia_eval_judge_free(harm);
    return rc;
}

static int stage_finalize(run *R, ia_error *err) {
    stage_begin(R, "finalize", -1);
    int64_t rounds = 0;
    ia_store_get_i64(R->st, NULL, &rounds, NULL, "SELECT count(*) FROM checkpoints", "");
    int rc = IA_OK;
    char *final = path_join(R->dir, "final.gguf");
    const char *detail = NULL;
    if (rounds == 0) {
        detail = "no round trained: the base model is unchanged (no final.gguf)";
    } else {
        char *kind = NULL;
        ia_store_get_text(R->st, NULL, &kind, "SELECT kind FROM checkpoints WHERE round=?", "i", (int)rounds);
        char *last = checkpoint_path(R, (int)rounds);
        if (kind && !strcmp(kind, "full")) {
            size_t len;
            char *d = ia_file_read(last, &len, err);
            rc = d ? ia_write_file_atomic(final, d, len, err) : err->code;
            ia_free(d);
        } else {
            /* the merged matrices keep the base's precision where the merger can write it */
            uint32_t t = R->model && R->model->hp.n_layer > 0 ? R->model->layers[0].wq.type : IA_TYPE_F16;
            ia_merge_opts mo = {0};
            const char *ads[1] = {last};
            mo.base_path = R->cfg.base;
            mo.adapters = ads;
            mo.n_adapters = 1;
            mo.out_path = final;
            mo.type = t == IA_TYPE_F32 || t == IA_TYPE_BF16 || t == IA_TYPE_Q8_0 ? t : IA_TYPE_F16;
            rc = ia_merge_lora(&mo, err);
        }
        ia_free(kind);
        ia_free(last);
    }
    if (rc == IA_OK) rc = ia_align_write_outputs(R->st, R->dir, err);
    if (rc == IA_OK) rc = ia_store_begin(R->st, err);
    if (rc == IA_OK) {
        rc = ia_store_stage_mark(R->st, -1, "finalize", detail, err);
        if (rc == IA_OK) rc = ia_store_meta_set(R->st, "state", "done", err);
        if (rc == IA_OK) rc = ia_store_commit(R->st, err);
        else ia_store_rollback(R->st);
    }
    if (rc == IA_OK) {
        if (rounds) logf_(R, "final model: %s (base + round %d)", final, (int)rounds);
        else logf_(R, "%s", detail);
    }
    ia_free(final);
    return rc;
}

/* Whether the loop should stop before batch b: a window of batches that flagged nothing. */
static bool window_clean(run *R, int b) {
    int w = R->cfg.stop_window;
    if (w <= 0 || b < w) return false;
    int64_t flagged = 0, judged_n = 0;
    ia_store_get_i64(R->st, NULL, &flagged, NULL, "SELECT coalesce(sum(n_flagged), 0) FROM batches WHERE batch >= ? AND batch < ?", "ii", b - w, b);
    ia_store_get_i64(R->st, NULL, &judged_n, NULL, "SELECT count(*) FROM batches WHERE batch >= ? AND batch < ? AND n_flagged IS NOT NULL", "ii", b - w, b);
    return judged_n == w && flagged == 0;
}

static int run_batch(run *R, int b, ia_error *err) {
    int rc = IA_OK;
    if (!ia_store_stage_done(R->st, b, "redteam") && (rc = stage_redteam(R, b, err))) return rc;
    if (!ia_store_stage_done(R->st, b, "judge") && (rc = stage_judge(R, b, err))) return rc;
    if (!ia_store_stage_done(R->st, b, "propose") && (rc = stage_propose(R, b, err))) return rc;
    int64_t skipped = 0;
    ia_store_get_i64(R->st, NULL, &skipped, NULL, "SELECT coalesce(skipped, 0) FROM batches WHERE batch=?", "i", b);
    if (skipped) return IA_OK;
    if (!ia_store_stage_done(R->st, b, "revise") && (rc = stage_revise(R, b, err))) return rc;
    if (!ia_store_stage_done(R->st, b, "rejudge") && (rc = stage_rejudge(R, b, err))) return rc;
    if (!ia_store_stage_done(R->st, b, "train") && (rc = stage_train(R, b, err))) return rc;
    return ia_align_write_outputs(R->st, R->dir, err);
}

static void run_free(run *R) {
    if (R->prop_t != R->judge_t) ia_teacher_free(R->prop_t);
    ia_teacher_free(R->judge_t);
    ia_rules_free(R->rules);
    ia_model_free(R->model);
    ia_prompts_free(R->train, R->n_train);
    ia_prompts_free(R->held, R->n_held);
    free_strs(R->train_pres, R->n_train);
    free_strs(R->held_pres, R->n_held);
    ia_store_close(R->st);
    ia_align_config_free(&R->cfg);
    if (R->lock_fd >= 0) close(R->lock_fd);
    ia_free(R->dir);
}

int ia_align_run(const char *dir, const ia_align_config *cfg, const ia_strv *explicit_set, const ia_align_callbacks *cb,
                 ia_error *err) {
    run R;
    memset(&R, 0, sizeof R);
    R.dir = ia_strdup(dir);
    R.cb = cb;
    R.lock_fd = -1;
    R.batch = -1;
    ia_error local = {0};
    if (!err) err = &local;
    ia_error_clear(err);
    char *db = path_join(dir, "run.db");
    bool exists = access(db, F_OK) == 0;
    ia_free(db);
    int rc;
    if (exists) {
        rc = open_existing(&R, cfg, explicit_set, err);
        if (rc == IA_OK) logf_(&R, "resuming %s", dir);
        if (rc == IA_ERR_FORMAT && R.st && !err->msg[0]) {
            /* a store without a configuration: the process that created it died before its first
               transaction committed, so nothing of the run exists yet; create it again */
            ia_store_close(R.st);
            R.st = NULL;
            const char *sfx[] = {"", "-wal", "-shm"};
            for (int i = 0; i < 3; i++) {
                ia_buf b = {0};
                ia_buf_printf(&b, "%s/run.db%s", dir, sfx[i]);
                unlink(b.data);
                ia_buf_free(&b);
            }
            close(R.lock_fd);
            R.lock_fd = -1;
            R.recreate = true;
            exists = false;
        }
    }
    if (!exists) {
        rc = create_run(&R, cfg, err);
        if (rc == IA_OK) logf_(&R, "new run in %s", dir);
    }
    if (rc == IA_OK) {
        ia_set_threads(R.cfg.threads);
        /* the prompts come from the store from here on: a resumed run uses exactly the same ones */
        ia_prompts_free(R.train, R.n_train);
        ia_prompts_free(R.held, R.n_held);
        R.train = R.held = NULL;
        load_prompts(&R, "train", &R.train, &R.train_pres, &R.n_train, err);
        load_prompts(&R, "heldout", &R.held, &R.held_pres, &R.n_held, err);
        char *rules_json = ia_store_meta_get(R.st, "rules_json", NULL);
        rc = open_judges(&R, rules_json, err);
        ia_free(rules_json);
    }
    if (rc == IA_OK) {
        R.n_batches = (R.n_train + R.cfg.batch_size - 1) / R.cfg.batch_size;
        if (R.cfg.max_batches > 0 && R.n_batches > R.cfg.max_batches) R.n_batches = R.cfg.max_batches;
        logf_(&R, "%d red-team prompts in %d batch%s of %d, %d held-out prompts; judge: %s%s%s", R.n_train, R.n_batches,
              R.n_batches == 1 ? "" : "es", R.cfg.batch_size < R.n_train ? R.cfg.batch_size : R.n_train, R.n_held, R.use_rules ? "rules" : "", R.use_rules && R.use_llm ? " + " : "",
              R.use_llm ? ia_teacher_describe(R.judge_t) : "");
    }
    bool do_eval = R.cfg.measure && R.n_held > 0;
    if (rc == IA_OK && do_eval && !ia_store_stage_done(R.st, -1, "eval_before")) rc = stage_eval(&R, "before", 0, err);
    bool do_tasks = R.cfg.eval && R.cfg.eval[0];
    if (rc == IA_OK && do_tasks && !ia_store_stage_done(R.st, -1, "tasks_before")) rc = stage_tasks(&R, "before", 0, err);
    int b = 0;
    for (; rc == IA_OK && b < R.n_batches; b++) {
        if (window_clean(&R, b)) {
            logf_(&R, "stopping: the last %d batches flagged nothing", R.cfg.stop_window);
            ia_store_meta_set(R.st, "stopped", "window of batches with nothing flagged", NULL);
            break;
        }
        rc = run_batch(&R, b, err);
    }
    if (rc == IA_OK && do_eval && !ia_store_stage_done(R.st, -1, "eval_after")) {
        int64_t rounds = 0;
        ia_store_get_i64(R.st, NULL, &rounds, NULL, "SELECT count(*) FROM checkpoints", "");
        rc = stage_eval(&R, "after", (int)rounds, err);
    }
    if (rc == IA_OK && do_tasks && !ia_store_stage_done(R.st, -1, "tasks_after")) {
        int64_t rounds = 0;
        ia_store_get_i64(R.st, NULL, &rounds, NULL, "SELECT count(*) FROM checkpoints", "");
        rc = stage_tasks(&R, "after", (int)rounds, err);
    }
    if (rc == IA_OK && !ia_store_stage_done(R.st, -1, "finalize")) rc = stage_finalize(&R, err);
    if (rc != IA_OK && R.stage && err && err->msg[0]) {
        char where[64];
        if (R.batch >= 0) snprintf(where, sizeof where, "batch %d, %s", R.batch + 1, R.stage);
        else snprintf(where, sizeof where, "%s", R.stage);
        ia_error_prefix(err, "%s", where);
    }
    run_free(&R);
    return rc;
}
