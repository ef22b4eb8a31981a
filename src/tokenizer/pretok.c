/* pretok.c — BPE pre-tokenizers: the regex lists behind each tokenizer.ggml.pre name (as llama.cpp
 * maps them), compiled once with PCRE2 (UTF + Unicode properties, JIT when available) and applied
 * in sequence, each splitting the words the previous one produced. */
#include "tokenizer/tok_internal.h"

/* ---- the regexes ----
 * Case-insensitive contractions are spelled with explicit classes, as llama.cpp does: PCRE2's
 * Unicode case folding would also let "'s" match U+017F, which the reference tokenizers do not. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                                                          \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
                    "\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                        \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
                    "\\s+(?!\\S)|\\s+"
#define RE_UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define RE_LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define RE_TEKKEN                                                                                          \
    "[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "*" RE_LOWER "+|[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "+" RE_LOWER "*|\\p{N}|" \
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_GPT4O                                                                                     \
    "[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "*" RE_LOWER "+" RE_CONTRACTIONS "?|[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER \
    "+" RE_LOWER "*" RE_CONTRACTIONS "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|"         \
    "\\s+(?!\\S)|\\s+"
/* CJK ideographs U+4E00..U+9FA5, U+0800..U+4E00 and Hangul U+AC00..U+D7FF */
#define RE_DEEPSEEK_CJK "[\\x{4E00}-\\x{9FA5}\\x{0800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"
/* the cased letters of deepseek-llm's tokenizer.json, written as code points so that no
 * normalisation of the source text can change them */
#define RE_DEEPSEEK_LETTERS                                                                                   \
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"         \
    "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}"        \
    "\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}"              \
    "\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"           \
    "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"           \
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"    \
    "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}"   \
    "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}"            \
    "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}"             \
    "\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}"             \
    "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"             \
    "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}"           \
    "\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}"         \
    "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}" \
    "\\x{1E900}-\\x{1E943}]+"
/* ASCII and full-width punctuation, curly quotes, ideographic space and full stop */
#define RE_DEEPSEEK_PUNCT \
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+"
/* everything up to whitespace or one of . , ! ? … 。 ， 、 । ۔ ، (and the literal ( | ) of the
 * original class) */
#define RE_PORO " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{0964}\\x{06D4}\\x{060C})]+"

enum {
    PRE_IGNORE_MERGES = 1, /* a word that is a token is emitted whole */
    PRE_ADD_BOS = 2,       /* add_bos defaults to true */
    PRE_NO_BOS = 4,        /* the vocabulary has no BOS token */
};

typedef struct pretok_set {
    const char *re[IA_TOK_MAX_REGEX]; /* NULL-terminated */
} pretok_set;

enum {
    SET_DEFAULT, SET_GPT2, SET_LLAMA3, SET_QWEN2, SET_SMOLLM, SET_FALCON, SET_DEEPSEEK_LLM,
    SET_DEEPSEEK_CODER, SET_DEEPSEEK3, SET_PORO, SET_VIKING, SET_TEKKEN, SET_GPT4O, SET_CHAMELEON,
    SET_BAILINGMOE, SET_SEED_CODER, SET_EXAONE_MOE,
};

static const pretok_set pretok_sets[] = {
    [SET_DEFAULT] = {{"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}},
    [SET_GPT2] = {{RE_GPT2}},
    [SET_LLAMA3] = {{RE_LLAMA3}},
    [SET_QWEN2] = {{RE_QWEN2}},
    [SET_SMOLLM] = {{"\\p{N}", RE_GPT2}},
    [SET_FALCON] = {{"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}},
    [SET_DEEPSEEK_LLM] = {{"[\\r\\n]", RE_DEEPSEEK_LETTERS, RE_DEEPSEEK_PUNCT, "\\s+$", RE_DEEPSEEK_CJK, "\\p{N}+"}},
    [SET_DEEPSEEK_CODER] = {{"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_DEEPSEEK_CJK, "\\p{N}"}},
    [SET_DEEPSEEK3] = {{"\\p{N}{1,3}", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
                        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?"
                        "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
    [SET_PORO] = {{RE_PORO}},
    [SET_VIKING] = {{RE_PORO, "\\p{N}"}},
    [SET_TEKKEN] = {{RE_TEKKEN}},
    [SET_GPT4O] = {{RE_GPT4O}},
    [SET_CHAMELEON] = {{"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
                        "[\\p{P}!-/:-@\\[-`{-~]", RE_GPT2}},
    [SET_BAILINGMOE] = {{"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
                         " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"}},
    [SET_SEED_CODER] = {{RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|"
                                         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
    /* upstream's (?:L M*(?: L M*)*)+ written as L M*(?: ?L M*)*+ : the same language (letters with
     * marks, joined by nothing or one space) and the same greedy match, since nothing follows it in
     * its alternative; the nested repeat kept a backtracking frame per letter and ran out of memory
     * on multi-megabyte words */
    [SET_EXAONE_MOE] = {{RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}\\p{M}*(?: ?\\p{L}\\p{M}*)*+|\\p{N}|"
                                         " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"}},
};

typedef struct pretok_name {
    const char *name;
    int set;
    unsigned flags;
} pretok_name;

/* tokenizer.ggml.pre values, grouped as llama.cpp groups them (llama-vocab.cpp, load()). */
static const pretok_name pretok_table[] = {
    {"default", SET_DEFAULT, 0},
    {"llama3", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"llama-v3", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"llama-bpe", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"falcon3", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"falcon-h1", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"pixtral", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"midm-2.0", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"lfm2", SET_LLAMA3, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"dbrx", SET_LLAMA3, 0},
    {"smaug-bpe", SET_LLAMA3, 0},
    {"glm4", SET_LLAMA3, PRE_NO_BOS},
    {"chatglm-bpe", SET_LLAMA3, PRE_NO_BOS},
    {"deepseek-llm", SET_DEEPSEEK_LLM, 0},
    {"deepseek-coder", SET_DEEPSEEK_CODER, 0},
    {"deepseek-v3", SET_DEEPSEEK3, 0},
    {"hunyuan-dense", SET_DEEPSEEK3, 0},
    {"falcon", SET_FALCON, 0},
    {"gpt-2", SET_GPT2, 0},
    {"phi-2", SET_GPT2, 0},
    {"mpt", SET_GPT2, 0},
    {"olmo", SET_GPT2, 0},
    {"jais", SET_GPT2, 0},
    {"trillion", SET_GPT2, 0},
    {"granite-docling", SET_GPT2, 0},
    {"exaone4", SET_GPT2, 0},
    {"jina-es", SET_GPT2, 0},
    {"jina-de", SET_GPT2, 0},
    {"jina-v1-en", SET_GPT2, 0},
    {"jina-v2-es", SET_GPT2, 0},
    {"jina-v2-de", SET_GPT2, 0},
    {"jina-v2-code", SET_GPT2, 0},
    {"roberta-bpe", SET_GPT2, 0},
    {"gigachat", SET_GPT2, 0},
    {"a.x-4.0", SET_GPT2, 0},
    {"mellum", SET_GPT2, 0},
    {"modern-bert", SET_GPT2, 0},
    {"starcoder", SET_SMOLLM, 0},
    {"refact", SET_SMOLLM, 0},
    {"command-r", SET_SMOLLM, 0},
    {"smollm", SET_SMOLLM, 0},
    {"codeshell", SET_SMOLLM, 0},
    {"exaone", SET_SMOLLM, 0},
    {"minerva-7b", SET_SMOLLM, 0},
    {"qwen2", SET_QWEN2, 0},
    {"deepseek-r1-qwen", SET_QWEN2, 0},
    {"kormo", SET_QWEN2, 0},
    {"stablelm2", SET_QWEN2, 0},
    {"megrez", SET_QWEN2, 0},
    {"hunyuan", SET_QWEN2, 0},
    {"solar-open", SET_QWEN2, 0},
    {"grok-2", SET_QWEN2, 0},
    {"poro-chat", SET_PORO, 0},
    {"bloom", SET_PORO, 0},
    {"gpt3-finnish", SET_PORO, 0},
    {"viking", SET_VIKING, 0},
    {"tekken", SET_TEKKEN, PRE_IGNORE_MERGES | PRE_ADD_BOS},
    {"gpt-4o", SET_GPT4O, 0},
    {"llama4", SET_GPT4O, 0},
    {"minimax-m2", SET_GPT4O, 0},
    {"chameleon", SET_CHAMELEON, PRE_ADD_BOS},
    {"bailingmoe", SET_BAILINGMOE, 0},
    {"bailingmoe2", SET_BAILINGMOE, 0},
    {"llada-moe", SET_BAILINGMOE, 0},
    {"seed-coder", SET_SEED_CODER, 0},
    {"exaone-moe", SET_EXAONE_MOE, 0},
};
#define N_PRETOK ((int)(sizeof pretok_table / sizeof pretok_table[0]))

const char *ia_tok_pretok_name_at(int i) { return i >= 0 && i < N_PRETOK ? pretok_table[i].name : NULL; }

/* PCRE2 allocates through these so that all library memory goes through ia_malloc. */
static void *pcre_alloc(size_t n, void *ud) {
    (void)ud;
    return ia_malloc(n);
}
static void pcre_free(void *p, void *ud) {
    (void)ud;
    ia_free(p);
}

int ia_tok_pretok_init(ia_tokenizer *t, const char *pre, ia_error *err) {
    const pretok_name *def = NULL;
    for (int i = 0; i < N_PRETOK; i++) {
        if (strcmp(pretok_table[i].name, pre) == 0) { def = &pretok_table[i]; break; }
    }
    if (!def) {
        return ia_error_set(err, IA_ERR_UNSUPPORTED,
                            "tokenizer.ggml.pre = '%s' is not a known pre-tokenizer (known: default, gpt-2, "
                            "llama-bpe, qwen2, smollm, deepseek-llm, ...; %d names in all)",
                            pre, N_PRETOK);
    }
    t->ignore_merges = (def->flags & PRE_IGNORE_MERGES) != 0;
    if (def->flags & PRE_ADD_BOS) t->add_bos = true;
    if (def->flags & PRE_NO_BOS) t->bos = -1;

    t->gctx = pcre2_general_context_create(pcre_alloc, pcre_free, NULL);
    pcre2_compile_context *cctx = t->gctx ? pcre2_compile_context_create(t->gctx) : NULL;
    if (!cctx) return ia_error_set(err, IA_ERR_NOMEM, "tokenizer: out of memory");
    const pretok_set *set = &pretok_sets[def->set];
    int rc = IA_OK;
    for (int i = 0; i < IA_TOK_MAX_REGEX && set->re[i]; i++) {
        int ec;
        PCRE2_SIZE eoff;
        /* MATCH_INVALID_UTF: ill-formed input is allowed (it simply never matches, so it ends up in
         * the gaps between words) and the subject is not re-validated on every call, which would
         * make splitting a long text quadratic. */
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)set->re[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eoff, cctx);
        if (!re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(ec, msg, sizeof msg);
            bool oom = ec == PCRE2_ERROR_HEAP_FAILED || ec == PCRE2_ERROR_NOMEMORY;
            rc = ia_error_set(err, oom ? IA_ERR_NOMEM : IA_ERR_INTERNAL,
                              "tokenizer.ggml.pre = '%s': regex %d does not compile at offset %zu: %s", pre, i,
                              (size_t)eoff, (const char *)msg);
            break;
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: the interpreter is the fallback */
        t->regex[t->n_regex++] = re;
    }
    pcre2_compile_context_free(cctx);
    return rc;
}

void ia_tok_pretok_free(ia_tokenizer *t) {
    for (int i = 0; i < t->n_regex; i++) pcre2_code_free(t->regex[i]);
    t->n_regex = 0;
    pcre2_general_context_free(t->gctx);
    t->gctx = NULL;
}

/* Per-call matching state. The big JIT stack is made only when a word needs more backtracking
 * room than the default 32 KiB (creating one maps memory, too slow to do for every short text). */
typedef struct split_ctx {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *stack; /* NULL until needed */
} split_ctx;

static int big_stack(const ia_tokenizer *t, split_ctx *c) {
    c->stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, t->gctx);
    if (!c->stack) return -1;
    pcre2_jit_stack_assign(c->mctx, NULL, c->stack);
    return 0;
}

/* Runs one regex over one word (subject = the word alone, so that lookaheads and $ see its end, as
 * in llama.cpp), appending matches and the gaps between them to out. */
static int split_one(const ia_tokenizer *t, int ri, split_ctx *c, const char *text, ia_tok_span w, ia_tok_spans *out,
                     ia_error *err) {
    const pcre2_code *re = t->regex[ri];
    PCRE2_SPTR subj = (PCRE2_SPTR)(text + w.off);
    size_t pos = 0, gap = 0;
    while (pos < w.len) {
        int rc = pcre2_match(re, subj, w.len, pos, 0, c->md, c->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !c->stack) {
            if (big_stack(t, c) != 0) goto oom;
            rc = pcre2_match(re, subj, w.len, pos, 0, c->md, c->mctx);
        }
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
            /* pathological input: retry with the interpreter, whose backtracking lives on the heap */
            rc = pcre2_match(re, subj, w.len, pos, PCRE2_NO_JIT, c->md, c->mctx);
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ia_error_set(err, rc == PCRE2_ERROR_NOMEMORY ? IA_ERR_NOMEM : IA_ERR_INTERNAL,
                                "tokenizer: pre-tokenizer '%s' regex %d failed on a %zu-byte word: %s", t->pre_name,
                                ri, w.len, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: step over one character and keep looking */
            int l = ms < w.len ? ia_tok_utf8_len(subj + ms, w.len - ms) : 1;
            pos = ms + (l ? (size_t)l : 1);
            continue;
        }
        if (ms > gap && !ia_tok_spans_push(out, w.off + gap, ms - gap)) goto oom;
        if (!ia_tok_spans_push(out, w.off + ms, me - ms)) goto oom;
        gap = pos = me;
    }
    if (gap < w.len && !ia_tok_spans_push(out, w.off + gap, w.len - gap)) goto oom;
    return IA_OK;
oom:
    return ia_error_set(err, IA_ERR_NOMEM, "tokenizer: out of memory");
}

int ia_tok_pretok_split(const ia_tokenizer *t, const char *text, size_t len, ia_tok_spans *out, ia_error *err) {
    ia_tok_spans cur = {0}, next = {0};
    split_ctx c = {0};
    int rc = IA_ERR_NOMEM;
    if (!ia_tok_spans_push(&cur, 0, len)) goto oom;
    /* PCRE2's default limits (10 million backtracks, 20 MB of interpreter heap) guard against
     * runaway patterns; these patterns are fixed and backtrack linearly, but a multi-megabyte run
     * of one character class legitimately needs more. */
    c.mctx = pcre2_match_context_create(t->gctx);
    if (!c.mctx) goto oom;
    pcre2_set_match_limit(c.mctx, UINT32_MAX);
    pcre2_set_depth_limit(c.mctx, UINT32_MAX);
    pcre2_set_heap_limit(c.mctx, 1u << 20); /* KiB: 1 GiB */
    for (int ri = 0; ri < t->n_regex; ri++) {
        c.md = pcre2_match_data_create_from_pattern(t->regex[ri], t->gctx);
        if (!c.md) goto oom;
        next.n = 0;
        for (size_t i = 0; i < cur.n; i++) {
            rc = split_one(t, ri, &c, text, cur.v[i], &next, err);
            if (rc != IA_OK) goto done;
        }
        pcre2_match_data_free(c.md);
        c.md = NULL;
        ia_tok_spans tmp = cur;
        cur = next;
        next = tmp;
    }
    ia_free(out->v);
    *out = cur;
    cur.v = NULL;
    rc = IA_OK;
    goto done;
oom:
    rc = ia_error_set(err, IA_ERR_NOMEM, "tokenizer: out of memory");
done:
    pcre2_match_data_free(c.md);
    pcre2_jit_stack_free(c.stack);
    pcre2_match_context_free(c.mctx);
    ia_free(cur.v);
    ia_free(next.v);
    return rc;
}
