"""The safety-team view: what the rules catch, shadow candidates against enforced rules, and
how the exported features are distributed.

``$rule`` and ``$feature`` are multi-select variables whose "All" value is the regex ``.*``.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.panels import (
    Q,
    bars,
    datasource_variable,
    heatmap_panel,
    label_variable,
    table_panel,
    ts,
)

UID = "featureguard-safety"
RI = "[$__rate_interval]"
MATCHES = 'featureguard_rule_matches_total{rule=~"$rule"}'
ACTIVATION = 'featureguard_feature_activation_bucket{feature=~"$feature"}'


def matches_rate(by: str) -> str:
    return f"sum by ({by}) (rate({MATCHES}{RI}))"


def activation_quantile(q: float) -> str:
    return f"histogram_quantile({q}, sum by (le, feature) (rate({ACTIVATION}{RI})))"


def build() -> dashboard.Dashboard:
    """The ``featureguard-safety`` dashboard builder."""
    d = (
        dashboard.Dashboard("featureguard: safety team")
        .uid(UID)
        .description("Per-rule match rates, shadow vs enforce, top rules, feature distributions")
        .tags(["featureguard"])
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(datasource_variable())
        .with_variable(
            label_variable(
                "rule", "Rule", "featureguard_rule_matches_total", "Rules of the loaded policies"
            )
        )
        .with_variable(
            label_variable(
                "feature",
                "Exported feature",
                "featureguard_feature_activation_count",
                "Features the policy marks export: true",
            )
        )
    )
    d = d.with_row(dashboard.Row("Rule matches"))
    d = d.with_panel(
        ts(
            "Match rate by rule",
            "Matches per second of each selected rule, shadow and enforce.",
            "suffix: matches/s",
            Q(matches_rate("rule"), "{{rule}}"),
            legend_table=True,
        )
    )
    d = d.with_panel(
        ts(
            "Matches per 1,000 monitored tokens",
            "Each rule's matches relative to traffic (all monitored tokens, prompt and "
            "completion): a rise here is a change in what users send or the model writes, not "
            "just more traffic.",
            "short",
            Q(
                f"1000 * {matches_rate('rule')} / scalar(sum(rate("
                f"featureguard_tokens_monitored_total{RI})))",
                "{{rule}}",
            ),
            legend_table=True,
        )
    )
    d = d.with_panel(
        ts(
            "Shadow vs enforce",
            "Matches per second of shadow rules (recorded, never act) against enforce rules. "
            "A shadow candidate's rate is what enforcing it would cost.",
            "suffix: matches/s",
            Q(matches_rate("mode"), "{{mode}}"),
        )
    )
    d = d.with_panel(
        ts(
            "Matches by severity",
            "Matches per second of the selected rules by severity, stacked.",
            "suffix: matches/s",
            Q(matches_rate("severity"), "{{severity}}"),
            stack=True,
        )
    )
    d = d.with_panel(
        bars(
            "Top rules in the time range",
            "The 10 rules with most matches over the dashboard's time range, with their mode.",
            "short",
            Q(
                f"topk(10, sum by (rule, mode) (increase({MATCHES}[$__range])))",
                "{{rule}} ({{mode}})",
                instant=True,
            ),
        )
    )
    d = d.with_panel(
        table_panel(
            "Matches per rule, severity and mode in the time range",
            "Totals over the dashboard's time range: compare a shadow rule with the enforce "
            "rule it would replace before switching modes.",
            "short",
            Q(
                f"sum by (rule, severity, mode) (increase({MATCHES}[$__range]))",
                instant=True,
                fmt=PromQueryFormat.TABLE,
            ),
        )
    )
    d = d.with_row(dashboard.Row("Exported features"))
    d = d.with_panel(
        heatmap_panel(
            "Activation distribution",
            "Histogram of the selected exported features' activations per monitored token "
            "(SAE units; the le=0 bucket holds the inactive tokens), summed over features.",
            "none",
            Q(
                f"sum by (le) (rate({ACTIVATION}{RI}))",
                "{{le}}",
                fmt=PromQueryFormat.HEATMAP,
            ),
        )
    )
    d = d.with_panel(
        ts(
            "Activation quantiles",
            "p50 / p90 / p99 of each exported feature's activation (SAE units), interpolated "
            "within histogram buckets. Compare with the rule thresholds on that feature.",
            "none",
            Q(activation_quantile(0.5), "p50 {{feature}}"),
            Q(activation_quantile(0.9), "p90 {{feature}}"),
            Q(activation_quantile(0.99), "p99 {{feature}}"),
        )
    )
    d = d.with_panel(
        ts(
            "Share of tokens where the feature is active",
            "Fraction of monitored tokens with a positive activation, per exported feature. "
            "A jump to 0 or 1 usually means the SAE no longer fits the model.",
            "percentunit",
            Q(
                "1 - sum by (feature) (rate(featureguard_feature_activation_bucket"
                '{feature=~"$feature", le=~"0|0.0"}' + RI + ")) / sum by (feature) (rate("
                'featureguard_feature_activation_count{feature=~"$feature"}' + RI + "))",
                "{{feature}}",
            ),
            width=24,
        )
    )
    return d
