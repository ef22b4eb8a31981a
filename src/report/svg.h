/* svg.h — the report's SVG charts: line series with markers, or bars, on one pair of axes. */
#ifndef IA_REPORT_SVG_H
#define IA_REPORT_SVG_H

#include "util/util.h"

typedef struct svg_series {
    const char *name;
    const char *color;          /* "#rrggbb" */
    const char *const *colors;  /* bars: a colour per point (NULL: color) */
    int n;
    const double *x, *y;        /* points; non-finite y are skipped */
    bool bars;
    bool dashed;
} svg_series;

typedef struct svg_chart_opts {
    const char *title, *xlabel, *ylabel;
    int width, height;          /* 0: 640 x 300 */
    const double *xticks;       /* x positions of labelled ticks (NULL: integer ticks) */
    const char *const *xtick_labels;
    int n_xticks;
    bool y_percent;             /* y tick labels as percentages of 1 */
    bool y_from_zero;           /* the y axis starts at 0 */
    double y_max_at_least;      /* the y axis reaches at least this */
    bool legend;                /* a legend even for one series */
    bool y_integer;             /* y ticks on whole numbers (counts) */
} svg_chart_opts;

void svg_chart(ia_buf *b, const svg_chart_opts *o, const svg_series *s, int n);
/* Text escaped for XML/HTML (& < > " '). */
void svg_escape(ia_buf *b, const char *s);
/* The i-th colour of the palette. */
const char *svg_color(int i);

#endif /* IA_REPORT_SVG_H */
