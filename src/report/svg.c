/* svg.c — small self-contained SVG charts for the report (lines with markers, or bars): axes with
 * rounded ticks, a legend, text escaped; no fonts, scripts or styles from outside the file. */
#include "report/svg.h"
#include "util/util.h"

#include <math.h>

void svg_escape(ia_buf *b, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '&': ia_buf_puts(b, "&amp;"); break;
        case '<': ia_buf_puts(b, "&lt;"); break;
        case '>': ia_buf_puts(b, "&gt;"); break;
        case '"': ia_buf_puts(b, "&quot;"); break;
        case '\'': ia_buf_puts(b, "&#39;"); break;
        default: ia_buf_append(b, s, 1);
        }
    }
}

const char *svg_color(int i) {
    static const char *const C[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
    return C[(i % 8 + 8) % 8];
}

/* A "nice" tick step (1, 2 or 5 times a power of ten) giving about `want` intervals over span. */
static double nice_step(double span, int want) {
    if (!(span > 0)) return 1;
    double raw = span / want, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
}

static void fmt_tick(char *out, size_t cap, double v, double step, bool percent) {
    if (percent) {
        double pv = v * 100, ps = step * 100;
        int dec = ps >= 1 ? 0 : ps >= 0.1 ? 1 : 2;
        snprintf(out, cap, "%.*f%%", dec, pv);
        return;
    }
    int dec = step >= 1 ? 0 : step >= 0.1 ? 1 : step >= 0.01 ? 2 : 3;
    snprintf(out, cap, "%.*f", dec, v);
}

void svg_chart(ia_buf *b, const svg_chart_opts *o, const svg_series *s, int n) {
    const int W = o->width > 0 ? o->width : 640, H = o->height > 0 ? o->height : 300;
    const bool legend = n > 1 || o->legend;
    const int L = 64, R = 30, T = legend ? 52 : 36, B = o->xlabel ? 52 : 36;
    const int pw = W - L - R, ph = H - T - B;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int i = 0; i < s[k].n; i++) {
            if (!isfinite(s[k].y[i])) continue;
            if (s[k].x[i] < xmin) xmin = s[k].x[i];
            if (s[k].x[i] > xmax) xmax = s[k].x[i];
            if (s[k].y[i] < ymin) ymin = s[k].y[i];
            if (s[k].y[i] > ymax) ymax = s[k].y[i];
        }
    for (int i = 0; i < o->n_xticks; i++) {
        if (o->xticks[i] < xmin) xmin = o->xticks[i];
        if (o->xticks[i] > xmax) xmax = o->xticks[i];
    }
    if (!isfinite(xmin)) { xmin = 0; xmax = 1; }
    if (!isfinite(ymin)) { ymin = 0; ymax = 1; }
    if (o->y_from_zero && ymin > 0) ymin = 0;
    if (o->y_max_at_least > ymax) ymax = o->y_max_at_least;
    if (ymax - ymin < 1e-12) { ymax += 0.5; ymin -= ymin > 0 && !o->y_from_zero ? 0.5 : 0; if (ymax - ymin < 1e-12) ymax = ymin + 1; }
    double ystep = nice_step(ymax - ymin, 5);
    if (o->y_integer && ystep < 1) ystep = 1;
    ymin = floor(ymin / ystep) * ystep;
    ymax = ceil(ymax / ystep) * ystep;
    bool any_bars = false;
    for (int k = 0; k < n; k++) any_bars |= s[k].bars;
    double xpad = any_bars || xmax == xmin ? 0.5 : 0;
    double x0 = xmin - xpad, x1 = xmax + xpad;
#define SX(v) (L + ((v) - x0) / (x1 - x0) * pw)
#define SY(v) (T + ph - ((v) - ymin) / (ymax - ymin) * ph)
    ia_buf_printf(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                     "font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\n", W, H, W, H);
    ia_buf_puts(b, "<title>");
    svg_escape(b, o->title);
    ia_buf_puts(b, "</title>\n");
    ia_buf_printf(b, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", W, H);
    ia_buf_printf(b, "<text x=\"%d\" y=\"18\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">", L);
    svg_escape(b, o->title);
    ia_buf_puts(b, "</text>\n");
    /* y grid and labels */
    for (double v = ymin; v <= ymax + ystep * 1e-6; v += ystep) {
        char lab[32];
        fmt_tick(lab, sizeof lab, v, ystep, o->y_percent);
        ia_buf_printf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e2e2e2\"/>"
                         "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#555\">%s</text>\n",
                      L, SY(v), L + pw, SY(v), L - 6, SY(v) + 4, lab);
    }
    /* x ticks: the given labels, or integers */
    if (o->n_xticks > 0) {
        int every = o->n_xticks > 16 ? (o->n_xticks + 15) / 16 : 1;
        for (int i = 0; i < o->n_xticks; i += every) {
            ia_buf_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#555\">", SX(o->xticks[i]), T + ph + 16);
            svg_escape(b, o->xtick_labels ? o->xtick_labels[i] : "");
            ia_buf_puts(b, "</text>\n");
        }
    } else {
        double xs = nice_step(xmax - xmin, 8);
        if (xs < 1) xs = 1;
        for (double v = ceil(xmin / xs) * xs; v <= xmax + 1e-9; v += xs)
            ia_buf_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#555\">%g</text>\n", SX(v), T + ph + 16, v);
    }
    ia_buf_printf(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#888\"/>\n", L, T + ph, L + pw, T + ph);
    ia_buf_printf(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#888\"/>\n", L, T, L, T + ph);
    if (o->xlabel) {
        ia_buf_printf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#333\">", L + pw / 2, H - 10);
        svg_escape(b, o->xlabel);
        ia_buf_puts(b, "</text>\n");
    }
    if (o->ylabel) {
        ia_buf_printf(b, "<text x=\"14\" y=\"%d\" text-anchor=\"middle\" fill=\"#333\" transform=\"rotate(-90 14 %d)\">",
                      T + ph / 2, T + ph / 2);
        svg_escape(b, o->ylabel);
        ia_buf_puts(b, "</text>\n");
    }
    /* bars first (side by side when several series have bars), then lines over them */
    int n_bar_series = 0, bar_k = 0;
    for (int k = 0; k < n; k++) n_bar_series += s[k].bars;
    double slot = (double)pw / (x1 - x0) * 0.8;
    for (int k = 0; k < n; k++) {
        if (!s[k].bars) continue;
        double bw = slot / n_bar_series;
        for (int i = 0; i < s[k].n; i++) {
            if (!isfinite(s[k].y[i])) continue;
            double cx = SX(s[k].x[i]) - slot / 2 + bw * bar_k, y = SY(s[k].y[i]), base = SY(ymin > 0 ? ymin : 0 < ymax ? 0 : ymax);
            const char *col = s[k].colors ? s[k].colors[i] : s[k].color;
            ia_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>",
                          cx, y < base ? y : base, bw * 0.92, fabs(base - y), col);
            svg_escape(b, s[k].name);
            ia_buf_printf(b, ": %g</title></rect>\n", s[k].y[i]);
        }
        bar_k++;
    }
    for (int k = 0; k < n; k++) {
        if (s[k].bars) continue;
        ia_buf_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2.5\"%s points=\"", s[k].color,
                      s[k].dashed ? " stroke-dasharray=\"6 4\"" : "");
        for (int i = 0; i < s[k].n; i++)
            if (isfinite(s[k].y[i])) ia_buf_printf(b, "%.1f,%.1f ", SX(s[k].x[i]), SY(s[k].y[i]));
        ia_buf_puts(b, "\"/>\n");
        if (s[k].n <= 60)
            for (int i = 0; i < s[k].n; i++) {
                if (!isfinite(s[k].y[i])) continue;
                ia_buf_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"><title>", SX(s[k].x[i]), SY(s[k].y[i]),
                              s[k].color);
                svg_escape(b, s[k].name);
                ia_buf_printf(b, ": %g</title></circle>\n", s[k].y[i]);
            }
    }
    /* legend: one row under the title */
    if (legend) {
        int lx = L, ly = 38;
        for (int k = 0; k < n; k++) {
            ia_buf_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/><text x=\"%d\" y=\"%d\" fill=\"#333\">",
                          lx, ly - 10, s[k].color, lx + 16, ly);
            svg_escape(b, s[k].name);
            ia_buf_puts(b, "</text>\n");
            lx += 16 + 7 * (int)strlen(s[k].name ? s[k].name : "") + 18;
        }
    }
    ia_buf_puts(b, "</svg>\n");
#undef SX
#undef SY
}
