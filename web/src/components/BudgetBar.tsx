// BudgetBar shows a month's spend against a budget, with a marker at each
// warning threshold (80 %, 100 %…). The words beside it say the same, so
// that the picture is decoration for screen readers.
const W = 400, H = 22;

export function BudgetBar({ spent, amount, thresholds, text }: {
  spent: number; amount: number; thresholds: number[]; text: string;
}) {
  // The scale reaches the highest threshold or the spend, whichever is more.
  const pct = amount > 0 ? (spent / amount) * 100 : 0;
  const top = Math.max(100, pct, ...thresholds);
  const x = (p: number) => (Math.min(p, top) / top) * W;
  const over = thresholds.filter((t) => pct >= t).length;
  const cls = pct >= 100 ? "budget-bar over" : over ? "budget-bar warn" : "budget-bar";
  return (
    <div class="budget">
      <svg class={cls} aria-hidden="true" viewBox={`0 0 ${W} ${H + 14}`} width={W} height={H + 14}>
        <rect x={0} y={0} width={W} height={H} class="budget-track" />
        <rect x={0} y={0} width={x(pct)} height={H} class="budget-fill" />
        {thresholds.map((t) => (
          <g>
            <line x1={x(t)} x2={x(t)} y1={-2} y2={H + 2} class="budget-mark" />
            <text x={Math.min(x(t), W - 14)} y={H + 13} text-anchor="middle" class="budget-mark-label">{t}%</text>
          </g>
        ))}
      </svg>
      <p class="budget-text">{text}</p>
    </div>
  );
}
