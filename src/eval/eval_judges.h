/* eval_judges.h — judges for harmful_rate and refusal_rate built on the rules judge (src/judge) and
 * the teacher client (src/net); kept apart from eval.h so the core evaluations need neither. */
#ifndef IA_EVAL_JUDGES_H
#define IA_EVAL_JUDGES_H

#include "eval/eval.h"
#include "net/client.h"

/* The rules judge of src/judge loaded from a rules file: an answer is flagged when a rule matches. */
ia_eval_judge *ia_eval_judge_rules_new(const char *rules_path, ia_error *err);
/* An LLM judge through client (temperature 0, cached by the client when it has a cache). refusal:
 * XSTest's three labels (full compliance / full refusal / partial refusal; both refusals count);
 * else the judge module's structured harmfulness verdict. Requests that fail leave the verdict
 * unusable. The client must outlive the judge. */
ia_eval_judge *ia_eval_judge_llm_new(ia_client *client, const char *model, bool refusal, ia_error *err);
void ia_eval_judge_free(ia_eval_judge *j);

#endif /* IA_EVAL_JUDGES_H */
