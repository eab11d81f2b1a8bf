// A project's month against its budget, in words (GET /api/v1/standing:
// spent and the amount are in the budget's unit).
import type { ProjectStanding } from "../types";
import { money } from "./format";

// amountIn writes n in the budget's unit: money, or GPU-hours.
export function amountIn(s: ProjectStanding, n: number): string {
  if (s.budget?.unit === "gpu-hours") return `${Math.round(n * 100) / 100} GPU-hours`;
  return money(n, s.currency);
}

// percent of the budget spent, rounded; 0 without a budget.
export function percent(s: ProjectStanding): number {
  return s.budget?.amount ? Math.round((s.spent / s.budget.amount) * 100) : 0;
}

// spend: "$120.50 of $500.00 (24%)", or "no budget ($12.00 spent)".
export function spend(s: ProjectStanding): string {
  if (!s.budget?.amount) return `no budget (${amountIn(s, s.spent)} spent)`;
  return `${amountIn(s, s.spent)} of ${amountIn(s, s.budget.amount)} (${percent(s)}%)`;
}
