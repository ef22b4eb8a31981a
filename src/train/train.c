/* train.c — ia_train: the training loop (data, plan, model, AdamW steps with gradient
 * accumulation and clipping, JSONL log, checkpoints and resume, outputs). */
#include "train/train_internal.h"
#include "model/lora.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

ia_train_opts ia_train_opts_default(void) {
    ia_train_opts o;
    memset(&o, 0, sizeof o);
    o.method = IA_TRAIN_LORA;
    o.lora_rank = 8;
    o.lora_alpha = 16;
    o.lora_dropout = 0;
    o.epochs = 3;
    o.batch_size = 4;
    o.grad_accum = 1;
    o.lr = 1e-4f;
    o.weight_decay = 0;
    o.beta1 = 0.9f;
    o.beta2 = 0.999f;
    o.eps = 1e-8f;
    o.schedule = IA_LR_COSINE;
    o.warmup_ratio = 0.03f;
    o.grad_clip = 1.0f;
    o.max_len = 512;
    o.checkpoint_every = 50;
    return o;
}

static size_t peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024; /* Linux: KiB */
}

/* What must be equal for a checkpoint to be resumed: the base, the tokenized data and every option
 * that changes the numbers (not recompute, threads, paths or the logging cadence). */
static uint64_t fingerprint(const ia_model *m, const tr_dataset *ds, const ia_train_opts *o, const tr_model_opts *mo) {
    uint64_t h = tr_hash(0, &m->hp, sizeof m->hp);
    size_t fsz = gguf_file_size(m->gguf);
    h = tr_hash(h, &fsz, sizeof fsz);
    h = tr_hash(h, ds->tok, ds->n_tok * sizeof *ds->tok);
    h = tr_hash(h, ds->mask, ds->n_tok);
    for (int i = 0; i < ds->n_ex; i++) h = tr_hash(h, &ds->ex[i].n, sizeof ds->ex[i].n);
    int iv[] = {(int)o->method, mo->rank, (int)mo->targets, o->epochs, o->batch_size, o->grad_accum, (int)o->schedule,
                o->max_len, o->pack, o->bf16};
    float fv[] = {mo->alpha, mo->dropout, o->lr, o->weight_decay, o->beta1, o->beta2, o->eps, o->warmup_ratio,
                  o->grad_clip};
    h = tr_hash(h, iv, sizeof iv);
    h = tr_hash(h, fv, sizeof fv);
    h = tr_hash(h, &o->seed, sizeof o->seed);
    if (o->init_adapter) h = tr_hash(h, o->init_adapter, strlen(o->init_adapter));
    return h;
}

/* Keeps the log lines of steps <= `upto` (a resumed run rewrites what came after its checkpoint). */
static FILE *open_log(const char *path, int upto, ia_error *err) {
    if (upto > 0) {
        size_t len;
        ia_error e2 = {0};
        char *old = access(path, F_OK) == 0 ? ia_file_read(path, &len, &e2) : NULL;
        FILE *f = fopen(path, "w");
        if (!f) { ia_free(old); ia_error_set(err, IA_ERR_IO, "%s: cannot write: %s", path, strerror(errno)); return NULL; }
        for (char *p = old; p && *p;) {
            char *nl = strchr(p, '\n');
            size_t n = nl ? (size_t)(nl - p) + 1 : strlen(p);
            const char *s = strstr(p, "\"step\":");
            if (s && s < p + n && atoi(s + 7) <= upto) fwrite(p, 1, n, f);
            p += n;
        }
        ia_free(old);
        return f;
    }
    FILE *f = fopen(path, "w");
    if (!f) ia_error_set(err, IA_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    return f;
}

/* Copies an existing adapter's A/B into the parameters (continued training). */
static int load_init_adapter(tr_model *tm, const ia_lora_adapter *ad, ia_error *err) {
    char name[GGUF_MAX_NAME + 16];
    for (int l = 0; l < tm->hp.n_layer; l++)
        for (int j = 0; j < TR_NLIN; j++) {
            const ia_lora_mat *lm = &ad->mats[(size_t)l * IA_LORA_N + j];
            if (!lm->A) continue;
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", l, tr_lin_gguf[j]);
            int ia = tr_params_find(&tm->P, name);
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", l, tr_lin_gguf[j]);
            int ib = tr_params_find(&tm->P, name);
            if (ia < 0 || ib < 0 || lm->r != tm->o.rank)
                return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: blk.%d.%s has rank %d; continuing training needs one "
                                    "rank (%d) for every adapted matrix", ad->path, l, tr_lin_gguf[j], lm->r, tm->o.rank);
            memcpy(tm->P.p + tm->P.t[ia].off, lm->A, (size_t)lm->r * lm->n_in * sizeof(float));
            memcpy(tm->P.p + tm->P.t[ib].off, lm->B, (size_t)lm->n_out * lm->r * sizeof(float));
        }
    return IA_OK;
}

int ia_train(const ia_train_opts *o, ia_train_result *res, ia_error *err) {
    if (res) memset(res, 0, sizeof *res);
    if (!o || !o->base_path || !o->data_path || !o->out_path)
        return ia_error_set(err, IA_ERR_ARG, "ia_train: base_path, data_path and out_path are required");
    if (!(o->lr > 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) || !(o->eps > 0) ||
        !(o->warmup_ratio >= 0 && o->warmup_ratio <= 1) || !(o->grad_clip >= 0) || !(o->weight_decay >= 0) ||
        !(o->lora_dropout >= 0 && o->lora_dropout < 1) || o->max_len < 2)
        return ia_error_set(err, IA_ERR_ARG, "ia_train: an option is out of range (lr > 0, 0 <= beta < 1, eps > 0, "
                            "0 <= warmup_ratio <= 1, grad_clip >= 0, weight_decay >= 0, 0 <= dropout < 1, max_len >= 2)");
    ia_model *m = NULL;
    ia_lora_adapter *init = NULL;
    tr_dataset ds = {0};
    tr_plan pl = {0};
    tr_model tm = {0};
    tr_batch b = {0};
    FILE *log = NULL;
    int rc = IA_OK;
    double t_start = ia_time_now();

    m = ia_model_load(o->base_path, err);
    if (!m) return err ? err->code : IA_ERR_IO;
    tr_model_opts mo = {0};
    mo.method = o->method;
    mo.rank = o->lora_rank;
    mo.alpha = o->lora_alpha;
    mo.dropout = o->lora_dropout;
    mo.recompute = o->recompute;
    mo.bf16 = o->bf16;
    if (o->method == IA_TRAIN_LORA) {
        mo.targets = tr_parse_targets(o->lora_targets, err);
        if (!mo.targets) { rc = err ? err->code : IA_ERR_ARG; goto out; }
        if (o->init_adapter) {
            init = ia_lora_adapter_load(o->init_adapter, m, 1.0f, err);
            if (!init) { rc = err ? err->code : IA_ERR_FORMAT; goto out; }
            mo.rank = init->rank;
            mo.targets = init->targets;
            mo.alpha = init->alpha != 0 ? init->alpha : (float)init->rank;
        }
    }
    /* data first: a malformed line stops everything before any work */
    if ((rc = tr_dataset_load(&ds, o->data_path, m, o->chat_template, o->max_len, err)) != IA_OK) goto out;
    if ((rc = tr_plan_build(&pl, &ds, o, err)) != IA_OK) goto out;
    int max_pos = 1;
    for (int i = 0; i < ds.n_ex; i++) if (ds.ex[i].n > max_pos) max_pos = ds.ex[i].n;
    mo.max_tokens = pl.max_tokens;
    mo.max_pos = max_pos;
    if ((rc = tr_model_init(&tm, m, &mo, err)) != IA_OK) goto out;
    tm.seed = o->seed;
    if ((rc = tr_model_init_params(&tm, o->seed, err)) != IA_OK) goto out;
    if (init && (rc = load_init_adapter(&tm, init, err)) != IA_OK) goto out;
    if (tr_batch_alloc(&b, pl.max_tokens) != IA_OK) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto out; }

    /* resume */
    tr_ckpt_state st = {0};
    st.fingerprint = fingerprint(m, &ds, o, &mo);
    int start_step = 0;
    double first_loss = NAN;
    float last_loss = NAN;
    if (o->checkpoint_path) {
        int r = tr_checkpoint_read(o->checkpoint_path, &tm.P, &st, err);
        if (r < 0) { rc = err->code; goto out; }
        if (r == 1) {
            start_step = st.step;
            first_loss = st.first_loss;
            last_loss = (float)st.last_loss;
        }
    }
    if (o->log_path && !(log = open_log(o->log_path, start_step, err))) { rc = err->code; goto out; }

    const int total = pl.total_steps, spe = pl.steps_per_epoch;
    double run_tokens = 0, t_run = ia_time_now();
    for (int step = start_step; step < total; step++) {
        double t0 = ia_time_now();
        int epoch = step / spe, s = step % spe;
        int mb0 = s * o->grad_accum, mb1 = mb0 + o->grad_accum;
        if (mb1 > pl.n_micro) mb1 = pl.n_micro;
        /* the loss is the mean over every loss token of the step, so accumulation over micro-batches
         * gives the gradient of one large batch */
        long n_loss = 0, n_tok = 0;
        for (int mb = mb0; mb < mb1; mb++) {
            tr_plan_batch(&pl, &ds, epoch, mb, &b);
            n_loss += b.n_loss;
        }
        tr_params_zero_grad(&tm.P);
        double loss_sum = 0;
        for (int mb = mb0; mb < mb1; mb++) {
            tr_plan_batch(&pl, &ds, epoch, mb, &b);
            tm.micro = (uint64_t)epoch * pl.n_micro + mb;
            loss_sum += tr_model_step(&tm, &b, 1.0f / (float)n_loss, true);
            n_tok += b.N;
        }
        float loss = (float)(loss_sum / (double)n_loss);
        double gn = tr_grad_norm(&tm.P);
        float clip = (o->grad_clip > 0 && gn > o->grad_clip) ? (float)(o->grad_clip / (gn + 1e-6)) : 1.0f;
        float lr = tr_lr_at(o, step, total);
        tr_adamw_update(&tm.P, o, lr, step + 1, clip);
        if (!isfinite(loss) || !isfinite(gn)) {
            rc = ia_error_set(err, IA_ERR_RANGE, "step %d: the loss is %g and the gradient norm %g (diverged; lower the "
                              "learning rate)", step + 1, loss, gn);
            goto out;
        }
        if (step == 0 || isnan(first_loss)) first_loss = loss;
        last_loss = loss;
        double now = ia_time_now(), dt = now - t0;
        run_tokens += (double)n_tok;
        ia_train_progress pr = {step + 1, total, epoch + 1, loss, lr, (float)gn, dt > 0 ? n_tok / dt : 0, now - t_start};
        if (log) {
            fprintf(log, "{\"step\":%d,\"epoch\":%d,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6f,\"tokens\":%ld,"
                    "\"tokens_per_s\":%.1f,\"elapsed_s\":%.3f}\n", pr.step, pr.epoch, loss, lr, gn, n_tok,
                    pr.tokens_per_s, pr.elapsed_s);
            fflush(log);
        }
        if (o->progress) o->progress(o->progress_ud, &pr);
        bool last = step + 1 == total;
        if (o->checkpoint_path && ((o->checkpoint_every > 0 && (step + 1) % o->checkpoint_every == 0) || last)) {
            st.step = step + 1;
            st.first_loss = first_loss;
            st.last_loss = last_loss;
            if ((rc = tr_checkpoint_write(o->checkpoint_path, &tm.P, &st, err)) != IA_OK) goto out;
        }
    }
    rc = o->method == IA_TRAIN_LORA ? tr_write_adapter(&tm, o->out_path, err) : tr_write_full_model(&tm, o->out_path, err);
    if (rc == IA_OK && res) {
        double el = ia_time_now() - t_run;
        res->steps = total;
        res->first_loss = (float)first_loss;
        res->final_loss = last_loss;
        res->tokens_per_s = el > 0 ? run_tokens / el : 0;
        res->peak_bytes = peak_rss_bytes();
    }
out:
    if (log) fclose(log);
    tr_batch_free(&b);
    tr_model_free(&tm);
    tr_plan_free(&pl);
    tr_dataset_free(&ds);
    ia_lora_adapter_free(init);
    ia_model_free(m);
    return rc;
}
