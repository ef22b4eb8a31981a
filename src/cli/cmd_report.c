/* cmd_report.c — `iteralign report` (being written). */
#include "cli.h"
int cmd_report(int argc, char **argv) { (void)argc; (void)argv; return cli_fail("report: not yet"); }
