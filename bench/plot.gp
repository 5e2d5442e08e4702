# bench/plot.gp -- throughput against concurrency, one panel per workload,
# one line per variant.  Run by script/bench in its output directory, which
# holds the data bench/report.py wrote (plot-*.dat: label, x, one column per
# variant; plot-vars.gp: where the pgbouncer cells start); writes
# throughput.svg and throughput.png there.
#
# The x axis is categorical: the session counts direct to PostgreSQL, then
# (right of the dashed line) through pgbouncer in transaction mode.  Missing
# points (NaN) are variants a cell does not run (pgbench cannot COPY) or runs
# that failed.

load 'plot-vars.gp'
set datafile missing 'NaN'
set key outside bottom center horizontal maxrows 2 font ',9'
set grid ytics lc rgb '#dddddd'
set yrange [0:*]
set offsets 0.3, 0.3, 0, 0
set format y '%.0s%c'
set xlabel 'sessions'
set style line 1 lc rgb '#1f77b4' lw 2 pt 7 ps 0.8
set style line 2 lc rgb '#17becf' lw 2 pt 5 ps 0.8
set style line 3 lc rgb '#d62728' lw 2 pt 9 ps 0.8
set style line 4 lc rgb '#2ca02c' lw 2 pt 11 ps 0.8
set style line 5 lc rgb '#7f7f7f' lw 2 pt 13 ps 0.8 dt 2
set style line 6 lc rgb '#bcbd22' lw 2 pt 15 ps 0.8 dt 2

panel(f, t, y, sep) = sprintf('%s|%s|%s|%g', f, t, y, sep)
panels = 'select1 point copy storm'

do for [out in 'svg png'] {
    if (out eq 'svg') {
        set terminal svg size 1200,900 dynamic font 'sans,11' background rgb 'white'
        set output 'throughput.svg'
    } else {
        set terminal pngcairo size 1200,900 font 'sans,10' background rgb 'white'
        set output 'throughput.png'
    }
    set multiplot layout 2,2 title 'pqawait vs the alternatives: throughput against concurrency (medians)'
    do for [p in panels] {
        f = 'plot-'.p.'.dat'
        if (p eq 'select1') { t = 'SELECT 1'; y = 'queries/s'; sep = sep_select1; n = n_select1 }
        if (p eq 'point') { t = 'point select on 100,000 rows (prepared; unnamed via pgbouncer)'; y = 'queries/s'; sep = sep_point; n = n_point }
        if (p eq 'copy') { t = 'COPY OUT, 1 MiB'; y = 'MiB/s'; sep = sep_copy; n = n_copy }
        if (p eq 'storm') { t = 'connect, SELECT 1, disconnect'; y = 'sessions/s'; sep = sep_storm; n = n_storm }
        set title t
        set ylabel y
        unset arrow
        unset label
        if (sep >= 0) { set arrow 1 from sep, graph 0 to sep, graph 1 nohead dt 3 lc rgb '#888888' }
        if (n > 0) {
            plot for [i=3:8] f using 2:i:xtic(1) with linespoints ls (i-2) title columnhead(i)
        } else {
            set label 1 'not measured in this run' at graph 0.5, graph 0.5 center
            plot [0:1] [0:1] NaN notitle
        }
    }
    unset multiplot
    set output
}
