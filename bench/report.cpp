// report.cpp - turns run.sh's raw measurements into one markdown table.
//
//   report ROWS RESULTS
//
// ROWS: one row per line, tab-separated: key, label, better (hi|lo|info), decimals, servers
//       (a subset of "rhn": r = restartable_server, h = cpp-httplib, n = nginx; the others
//       show "n/a"), and optionally a goal: "n>=1.0" (ours ÷ nginx at least 1.0), "h>=X"
//       (ours ÷ cpp-httplib), or "v<=X" / "v>=X" (our own value); the goals are listed with
//       met / not met under the table. A goal never changes the exit status.
// RESULTS: tab-separated lines "key server value" with server one of rs, httplib, nginx and
//       value a number, "timeout:LIMIT" (more than LIMIT), "fail" or "n/a".
// Each cell is the median of its values (a timeout counts as larger than any number). The
// ratio columns are restartable_server divided by the peer. Exit status 1 when a cell that
// applies has no value or failed, so a smoke run can tell that every figure ran.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: report ROWS RESULTS\n");
        return 2;
    }
    std::map<std::pair<std::string, std::string>, std::vector<std::string>> raw;
    {
        std::ifstream in(argv[2]);
        std::string line;
        while (std::getline(in, line)) {
            auto f = split_tabs(line);
            if (f.size() >= 3) raw[{f[0], f[1]}].push_back(f[2]);
        }
    }
    auto get = [&](const std::string& key, const std::string& server) {
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
    };

    struct goal_line {
        std::string label, goal, measured, met;
    };
    std::vector<goal_line> goals;
    bool ok = true;
    std::printf("| figure | better | restartable_server | cpp-httplib | nginx | ours ÷ cpp-httplib | ours ÷ nginx |\n");
    std::printf("|---|:-:|--:|--:|--:|--:|--:|\n");
    std::ifstream rows(argv[1]);
    std::string line;
    while (std::getline(rows, line)) {
        auto f = split_tabs(line);
        if (f.size() < 5 || f[0].empty() || f[0][0] == '#') continue;
        const std::string& key = f[0];
        const std::string& better = f[2];
        const int decimals = std::atoi(f[3].c_str());
        const std::string& servers = f[4];
        const bool ar = servers.find('r') != std::string::npos;
        const bool ah = servers.find('h') != std::string::npos;
        const bool an = servers.find('n') != std::string::npos;
        cell r = get(key, "rs"), h = get(key, "httplib"), n = get(key, "nginx");
        for (auto [applies, c] : {std::pair<bool, cell>{ar, r}, {ah, h}, {an, n}})
            if (applies && (!c.present || c.failed)) ok = false;
        const char* arrow = better == "hi" ? "↑" : better == "lo" ? "↓" : "";
        std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", f[1].c_str(), arrow, show(r, decimals, ar).c_str(),
                    show(h, decimals, ah).c_str(), show(n, decimals, an).c_str(),
                    ratio(r, h, ar && ah && better != "info").c_str(),
                    ratio(r, n, ar && an && better != "info").c_str());
        if (f.size() > 5 && f[5].size() > 3) {
            // goal: TARGET OP NUMBER, TARGET one of n, h, v and OP >= or <=
            const std::string& g = f[5];
            const char target = g[0];
            const bool at_least = g.compare(1, 2, ">=") == 0;
            const double want = std::atof(g.c_str() + 3);
            goal_line gl;
            gl.label = f[1];
            const cell* peer = target == 'n' ? &n : target == 'h' ? &h : nullptr;
            const char* peer_name = target == 'n' ? "nginx" : "cpp-httplib";
            gl.goal = (peer ? std::string("ours ÷ ") + peer_name + " " : std::string("ours ")) +
                      (at_least ? "≥ " : "≤ ") + fmt(want, peer ? 1 : decimals) + (peer ? "×" : "");
            auto usable = [](const cell& c) { return c.present && !c.failed; };
            if (!usable(r) || (peer && !usable(*peer))) {
                gl.measured = "—";
                gl.met = "no value";
            } else if (peer) {
                gl.measured = ratio(r, *peer, true);
                const value& a = r.median;
                const value& b = peer->median;
                bool met = false;
                if (a.timeout && b.timeout) {
                    gl.met = "—";
                } else {
                    if (a.timeout)  // ours took longer than its limit: infinitely large
                        met = at_least;
                    else if (b.timeout || b.v == 0)
                        met = !at_least;
                    else
                        met = at_least ? a.v / b.v >= want : a.v / b.v <= want;
                    gl.met = met ? "met" : "not met";
                }
            } else {
                gl.measured = show(r, decimals, true);
                const bool met = r.median.timeout ? at_least : at_least ? r.median.v >= want : r.median.v <= want;
                gl.met = met ? "met" : "not met";
            }
            goals.push_back(gl);
        }
    }
    if (!goals.empty()) {
        std::printf("\n| goal | target | measured | |\n|---|---|--:|---|\n");
        for (const goal_line& g : goals)
            std::printf("| %s | %s | %s | %s |\n", g.label.c_str(), g.goal.c_str(), g.measured.c_str(), g.met.c_str());
    }
    return ok ? 0 : 1;
}
