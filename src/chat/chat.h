/* chat.h — chat templates: detection from tokenizer.chat_template and the built-in formatters
 * (public calls in iteralign.h). */
#ifndef IA_CHAT_H
#define IA_CHAT_H

#include "util/util.h"

#endif /* IA_CHAT_H */
