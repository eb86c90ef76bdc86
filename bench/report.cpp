// report.cpp - turns run.sh's raw measurements into one markdown table, and optionally the
// same figures as an SVG bar chart.
//
//   report ROWS RESULTS [--svg FILE] [--title TEXT] [--subtitle TEXT]...
//
// ROWS: one row per line, tab-separated: key (or key@name: the restartable_server column
//       shows server "name"'s values, another configuration of it), label, better
//       (hi|lo|info), decimals, servers
//       (a subset of "rhn": r = restartable_server, h = cpp-httplib, n = nginx; the others
//       show "n/a"), and optionally a goal: "n>=1.0" (ours ÷ nginx at least 1.0), "h>=X"
//       (ours ÷ cpp-httplib), or "v<=X" / "v>=X" (our own value); the goals are listed with
//       met / not met under the table. A goal never changes the exit status.
// RESULTS: tab-separated lines "key server value" with server one of rs, httplib, nginx and
//       value a number, "timeout:LIMIT" (more than LIMIT), "fail" or "n/a".
// Each cell is the median of its values (a timeout counts as larger than any number). The
// ratio columns are restartable_server divided by the peer. Exit status 1 when a cell that
// applies has no value or failed, so a smoke run can tell that every figure ran.
//
// --svg FILE writes every row as a small bar chart: one panel per row, one bar per server,
// each bar labelled with the value the table shows. Panels have their own linear scale (a
// panel's longest bar is its largest value), because the rows mix req/s, milliseconds and
// MiB. --title and --subtitle (repeatable) are printed above the panels. Plain SVG 1.1 with
// presentation attributes only (no CSS, no script, no external font), so a browser and
// GitHub's image view draw it alike.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct value {
    double v = 0;       // the number, or the limit of a timeout
    bool timeout = false;
    bool operator<(const value& o) const {
        if (timeout != o.timeout) return !timeout;
        return v < o.v;
    }
};

struct cell {
    bool present = false, failed = false;
    value median;
};

// The three servers, in column order.
constexpr int n_servers = 3;
const char* const server_key[n_servers] = {"rs", "httplib", "nginx"};
const char* const server_name[n_servers] = {"restartable_server", "cpp-httplib", "nginx"};
const char server_letter[n_servers] = {'r', 'h', 'n'};

// One line of ROWS with its cells looked up.
struct row {
    std::string label, better, goal;
    int decimals = 0;
    bool applies[n_servers] = {};
    cell cells[n_servers];
};

std::vector<std::string> split_tabs(const std::string& line) {
    std::vector<std::string> out;
    std::stringstream ss(line);
    std::string f;
    while (std::getline(ss, f, '\t')) out.push_back(f);
    return out;
}

std::string fmt(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

std::string show(const cell& c, int decimals, bool applies) {
    if (!applies) return "n/a";
    if (c.failed) return "FAIL";
    if (!c.present) return "missing";
    if (c.median.timeout) return "timeout (> " + fmt(c.median.v, 0) + ")";
    return fmt(c.median.v, decimals);
}

std::string ratio(const cell& ours, const cell& theirs, bool applies) {
    if (!applies || !ours.present || !theirs.present || ours.failed || theirs.failed) return "—";
    const value& a = ours.median;
    const value& b = theirs.median;
    if (a.timeout && b.timeout) return "—";
    if (b.v == 0) return "—";
    double r = a.v / b.v;
    char buf[64];
    int digits = r >= 10 ? 0 : r >= 1 ? 2 : std::max(2, 1 - static_cast<int>(std::floor(std::log10(r))));
    if (r == 0) digits = 0;
    std::snprintf(buf, sizeof buf, "%.*f×", digits, r);
    std::string s = buf;
    if (b.timeout) return "< " + s;  // the peer took longer than its limit
    if (a.timeout) return "> " + s;
    return s;
}

bool usable(const cell& c) { return c.present && !c.failed; }

// ------------------------------------------------------------------ results --

using raw_results = std::map<std::pair<std::string, std::string>, std::vector<std::string>>;

raw_results read_results(const char* path) {
    raw_results raw;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        auto f = split_tabs(line);
        if (f.size() >= 3) raw[{f[0], f[1]}].push_back(f[2]);
    }
    return raw;
}

/// median_cell: the lower median of one key's values for one server ("fail" marks it failed).
cell median_cell(const raw_results& raw, const std::string& key, const std::string& server) {
    cell c;
    auto it = raw.find({key, server});
    if (it == raw.end()) return c;
    std::vector<value> vals;
    for (const std::string& s : it->second) {
        if (s == "fail" || s.empty()) {
            c.failed = true;
            continue;
        }
        if (s == "n/a") continue;
        value v;
        if (s.compare(0, 8, "timeout:") == 0) {
            v.timeout = true;
            v.v = std::atof(s.c_str() + 8);
        } else {
            char* end = nullptr;
            v.v = std::strtod(s.c_str(), &end);
            if (end == s.c_str() || *end != '\0') {
                c.failed = true;
                continue;
            }
        }
        vals.push_back(v);
    }
    if (vals.empty()) return c;
    std::sort(vals.begin(), vals.end());
    c.present = true;
    c.median = vals[(vals.size() - 1) / 2];  // lower median: a timeout wins only with a majority
    return c;
}

std::vector<row> read_rows(const char* path, const raw_results& raw) {
    std::vector<row> rows;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
        auto f = split_tabs(line);
        if (f.size() < 5 || f[0].empty() || f[0][0] == '#') continue;
        row r;
        r.label = f[1];
        r.better = f[2];
        r.decimals = std::atoi(f[3].c_str());
        // "key@name": the restartable_server column shows what was recorded for server
        // "name" (another configuration of it, e.g. rs0: worker_threads = 0).
        const std::size_t at = f[0].find('@');
        const std::string key = f[0].substr(0, at);
        for (int s = 0; s < n_servers; ++s) {
            r.applies[s] = f[4].find(server_letter[s]) != std::string::npos;
            const std::string server = s == 0 && at != std::string::npos ? f[0].substr(at + 1) : server_key[s];
            r.cells[s] = median_cell(raw, key, server);
        }
        if (f.size() > 5) r.goal = f[5];
        rows.push_back(r);
    }
    return rows;
}

// -------------------------------------------------------------------- table --

struct goal_line {
    std::string label, goal, measured, met;
};

/// check_goal: a row's goal ("n>=1.0", "h>=X", "v<=X", "v>=X") against its cells.
goal_line check_goal(const row& r) {
    const std::string& g = r.goal;
    const char target = g[0];
    const bool at_least = g.compare(1, 2, ">=") == 0;
    const double want = std::atof(g.c_str() + 3);
    const cell& ours = r.cells[0];
    const cell* peer = target == 'n' ? &r.cells[2] : target == 'h' ? &r.cells[1] : nullptr;
    const char* peer_name = target == 'n' ? "nginx" : "cpp-httplib";
    goal_line gl;
    gl.label = r.label;
    gl.goal = (peer ? std::string("ours ÷ ") + peer_name + " " : std::string("ours ")) + (at_least ? "≥ " : "≤ ") +
              fmt(want, peer ? 1 : r.decimals) + (peer ? "×" : "");
    if (!usable(ours) || (peer && !usable(*peer))) {
        gl.measured = "—";
        gl.met = "no value";
        return gl;
    }
    if (!peer) {
        gl.measured = show(ours, r.decimals, true);
        const bool met = ours.median.timeout ? at_least : at_least ? ours.median.v >= want : ours.median.v <= want;
        gl.met = met ? "met" : "not met";
        return gl;
    }
    gl.measured = ratio(ours, *peer, true);
    const value& a = ours.median;
    const value& b = peer->median;
    if (a.timeout && b.timeout) {
        gl.met = "—";
        return gl;
    }
    bool met = false;
    if (a.timeout)  // ours took longer than its limit: infinitely large
        met = at_least;
    else if (b.timeout || b.v == 0)
        met = !at_least;
    else
        met = at_least ? a.v / b.v >= want : a.v / b.v <= want;
    gl.met = met ? "met" : "not met";
    return gl;
}

void print_table(const std::vector<row>& rows) {
    std::vector<goal_line> goals;
    std::printf("| figure | better | restartable_server | cpp-httplib | nginx | ours ÷ cpp-httplib | ours ÷ nginx |\n");
    std::printf("|---|:-:|--:|--:|--:|--:|--:|\n");
    for (const row& r : rows) {
        const char* arrow = r.better == "hi" ? "↑" : r.better == "lo" ? "↓" : "";
        const bool compare = r.better != "info";
        std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", r.label.c_str(), arrow,
                    show(r.cells[0], r.decimals, r.applies[0]).c_str(),
                    show(r.cells[1], r.decimals, r.applies[1]).c_str(),
                    show(r.cells[2], r.decimals, r.applies[2]).c_str(),
                    ratio(r.cells[0], r.cells[1], r.applies[0] && r.applies[1] && compare).c_str(),
                    ratio(r.cells[0], r.cells[2], r.applies[0] && r.applies[2] && compare).c_str());
        if (r.goal.size() > 3) goals.push_back(check_goal(r));
    }
    if (goals.empty()) return;
    std::printf("\n| goal | target | measured | |\n|---|---|--:|---|\n");
    for (const goal_line& g : goals)
        std::printf("| %s | %s | %s | %s |\n", g.label.c_str(), g.goal.c_str(), g.measured.c_str(), g.met.c_str());
}

// ---------------------------------------------------------------------- svg --

namespace svg {

// Geometry in px. Two columns of panels; a panel is its title (one or two lines) and one
// bar per server. Text widths are estimated at 0.6 em per character (DejaVu Sans, the
// usual sans-serif fallback on Linux, averages a little less), so labels never collide.
constexpr int width = 1040, margin = 20, gap = 20;
constexpr int panel_w = (width - 2 * margin - gap) / 2;
constexpr int name_w = 122;  // server names, right-aligned before the bars
constexpr int value_w = 112;  // room after the longest bar for its value label
constexpr int bar_w = panel_w - name_w - value_w;
constexpr int bar_h = 14, bar_gap = 4, title_line_h = 16, panel_pad = 14;
constexpr double title_em = 12.5, text_em = 11.5;
const char* const colour[n_servers] = {"#2563a8", "#d9731a", "#2f9e5b"};
const char* const font = "DejaVu Sans, Helvetica, Arial, sans-serif";

std::string escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            case '`': break;  // markdown code quotes: drop
            default: out += c;
        }
    }
    return out;
}

/// chars: the number of characters (UTF-8 code points) in s.
std::size_t chars(const std::string& s) {
    std::size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

/// wrap: s broken at spaces into lines of at most max_chars characters.
std::vector<std::string> wrap(const std::string& s, std::size_t max_chars) {
    std::vector<std::string> lines;
    std::string line, word;
    std::stringstream ss(s);
    while (ss >> word) {
        if (!line.empty() && chars(line) + 1 + chars(word) > max_chars) {
            lines.push_back(line);
            line.clear();
        }
        line += (line.empty() ? "" : " ") + word;
    }
    if (!line.empty()) lines.push_back(line);
    return lines;
}

std::vector<std::string> title_lines(const row& r) {
    std::string t = r.label;
    // A no-break space keeps the arrow on the line of the label's last word.
    if (r.better == "hi") t += "\u00a0↑";
    if (r.better == "lo") t += "\u00a0↓";
    const auto max_chars = static_cast<std::size_t>(panel_w / (0.6 * title_em));
    return wrap(escape(t), max_chars);
}

int panel_height(const row& r) {
    const int n_titles = static_cast<int>(title_lines(r).size());
    return n_titles * title_line_h + 6 + n_servers * (bar_h + bar_gap) + panel_pad;
}

struct writer {
    std::FILE* f;
    void text(double x, double y, const std::string& s, double em, const char* anchor = "start",
              const char* fill = "#1a1a1a", const char* weight = "normal") {
        std::fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\" text-anchor=\"%s\" fill=\"%s\" font-weight=\"%s\">%s</text>\n",
                     x, y, em, anchor, fill, weight, s.c_str());
    }
    void rect(double x, double y, double w, double h, const char* fill, const char* extra = "") {
        std::fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"%s/>\n", x, y, w, h, fill,
                     extra);
    }
};

/// panel: one row at (x, y): its title, then a bar per server scaled to the row's largest value.
void panel(writer& w, const row& r, int x, int y) {
    const auto titles = title_lines(r);
    for (std::size_t i = 0; i < titles.size(); ++i)
        w.text(x, y + 12 + static_cast<int>(i) * title_line_h, titles[i], title_em, "start", "#1a1a1a", "bold");
    double top = 0;  // the scale: the largest number (or timeout limit) in the row
    for (int s = 0; s < n_servers; ++s)
        if (r.applies[s] && usable(r.cells[s])) top = std::max(top, r.cells[s].median.v);
    int by = y + static_cast<int>(titles.size()) * title_line_h + 6;
    const int bx = x + name_w;
    for (int s = 0; s < n_servers; ++s, by += bar_h + bar_gap) {
        const double ty = by + bar_h - 3;  // text baseline inside the bar's line
        w.text(bx - 6, ty, server_name[s], text_em, "end", "#444444");
        w.rect(bx, by, bar_w, bar_h, "#f2f2f2");  // the track: where a full bar would end
        const cell& c = r.cells[s];
        const std::string label = show(c, r.decimals, r.applies[s]);
        if (!r.applies[s] || !usable(c)) {
            const char* fill = r.applies[s] ? "#c0262d" : "#888888";  // FAIL / missing in red
            w.text(bx + 4, ty, label, text_em, "start", fill, r.applies[s] ? "bold" : "normal");
            continue;
        }
        double len = top > 0 ? bar_w * c.median.v / top : 0;
        if (c.median.v > 0) len = std::max(len, 1.5);  // a tiny value stays visible
        if (c.median.timeout) {  // more than its limit: a full, faded bar ending in a dashed edge
            len = bar_w;
            w.rect(bx, by, len, bar_h, colour[s], " fill-opacity=\"0.35\"");
            std::fprintf(w.f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\" stroke-dasharray=\"3,2\"/>\n",
                         bx + len - 1, by, bx + len - 1, by + bar_h, colour[s]);
        } else {
            w.rect(bx, by, len, bar_h, colour[s]);
        }
        w.text(bx + len + 5, ty, label, text_em, "start", "#1a1a1a");
    }
}

/// write: the whole chart: title, subtitles, legend, then the panels in two columns, read
/// top to bottom: the left column holds the first rows, up to where the two columns end
/// nearest the same height.
bool write(const char* path, const std::vector<row>& rows, const std::string& title,
           const std::vector<std::string>& subtitles) {
    std::FILE* f = std::fopen(path, "w");
    if (!f) return false;
    writer w{f};
    // The header: title, wrapped subtitles, legend.
    const auto sub_chars = static_cast<std::size_t>((width - 2 * margin) / (0.6 * text_em));
    std::vector<std::string> sub_lines;
    for (const std::string& s : subtitles)
        for (const std::string& l : wrap(escape(s), sub_chars)) sub_lines.push_back(l);
    int y = margin + 18;
    const int header_h = 18 + 8 + static_cast<int>(sub_lines.size()) * 15 + 40;
    int total = 0;
    for (const row& r : rows) total += panel_height(r);
    std::size_t split = 0;  // rows [0, split) go left
    for (int left = 0; split < rows.size() && left + panel_height(rows[split]) / 2 <= total / 2; ++split)
        left += panel_height(rows[split]);
    int col_y[2] = {margin + header_h, margin + header_h};
    std::vector<std::pair<int, int>> at;  // each panel's x, y
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const int c = i < split ? 0 : 1;
        at.emplace_back(margin + c * (panel_w + gap), col_y[c]);
        col_y[c] += panel_height(rows[i]);
    }
    const int height = std::max(col_y[0], col_y[1]) + margin;
    std::fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    std::fprintf(f,
                 "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
                 "viewBox=\"0 0 %d %d\" font-family=\"%s\">\n",
                 width, height, width, height, font);
    w.rect(0, 0, width, height, "#ffffff");
    w.text(margin, y, escape(title.empty() ? "Benchmark results" : title), 17, "start", "#1a1a1a", "bold");
    y += 8;
    for (const std::string& l : sub_lines) w.text(margin, y += 15, l, text_em, "start", "#444444");
    y += 22;
    int lx = margin;
    for (int s = 0; s < n_servers; ++s) {
        w.rect(lx, y - 11, 14, 14, colour[s]);
        w.text(lx + 20, y, server_name[s], 12.5);
        lx += 20 + static_cast<int>(chars(server_name[s]) * 0.6 * 12.5) + 24;
    }
    w.text(lx, y, "↑ higher is better, ↓ lower is better; each panel has its own scale; faded, dashed end: timed out", text_em,
           "start", "#444444");
    for (std::size_t i = 0; i < rows.size(); ++i) panel(w, rows[i], at[i].first, at[i].second);
    std::fprintf(f, "</svg>\n");
    return std::fclose(f) == 0;
}

}  // namespace svg

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3 || (argc - 3) % 2 != 0) {
        std::fprintf(stderr, "usage: report ROWS RESULTS [--svg FILE] [--title TEXT] [--subtitle TEXT]...\n");
        return 2;
    }
    const char* svg_path = nullptr;
    std::string title;
    std::vector<std::string> subtitles;
    for (int i = 3; i < argc; i += 2) {
        if (std::strcmp(argv[i], "--svg") == 0) svg_path = argv[i + 1];
        else if (std::strcmp(argv[i], "--title") == 0) title = argv[i + 1];
        else if (std::strcmp(argv[i], "--subtitle") == 0) subtitles.push_back(argv[i + 1]);
        else {
            std::fprintf(stderr, "report: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    const std::vector<row> rows = read_rows(argv[1], read_results(argv[2]));
    print_table(rows);
    bool ok = true;
    for (const row& r : rows)
        for (int s = 0; s < n_servers; ++s)
            if (r.applies[s] && !usable(r.cells[s])) ok = false;
    if (svg_path && !svg::write(svg_path, rows, title, subtitles)) {
        std::fprintf(stderr, "report: cannot write %s\n", svg_path);
        ok = false;
    }
    return ok ? 0 : 1;
}
