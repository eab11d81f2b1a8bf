// BarChart draws labelled values as horizontal SVG bars. The picture is
// role="img" with a summary for screen readers; the caller shows the
// same numbers in a table, so that nothing is only in the chart.
export interface Bar { label: string; value: number; text: string }

const ROW = 26, LABEL = 160, TEXT = 110, WIDTH = 720;

// size is a value's length on the scale: a value that is not a positive
// number (0, none, a refund) draws no bar.
const size = (v: number) => (Number.isFinite(v) && v > 0 ? v : 0);

export function BarChart({ bars, summary }: { bars: Bar[]; summary: string }) {
  // The scale's top is the largest value; when all are 0 there is no
  // scale, and no bar.
  const max = Math.max(0, ...bars.map((b) => size(b.value)));
  const span = WIDTH - LABEL - TEXT;
  const height = Math.max(1, bars.length) * ROW + 4;
  return (
    <svg class="chart" role="img" aria-label={summary} viewBox={`0 0 ${WIDTH} ${height}`} width="100%" preserveAspectRatio="xMinYMin meet">
      {bars.map((b, i) => {
        const y = i * ROW + 2;
        const v = size(b.value);
        const w = max > 0 && v > 0 ? Math.max(2, (v / max) * span) : 0;
        return (
          <g aria-hidden="true">
            <text x={LABEL - 8} y={y + ROW / 2 + 5} text-anchor="end" class="chart-label">{clip(b.label)}</text>
            <rect x={LABEL} y={y + 3} width={w} height={ROW - 8} class="chart-bar" />
            <text x={LABEL + w + 6} y={y + ROW / 2 + 5} class="chart-value">{b.text}</text>
          </g>
        );
      })}
    </svg>
  );
}

function clip(s: string): string { return s.length > 22 ? s.slice(0, 21) + "…" : s; }
