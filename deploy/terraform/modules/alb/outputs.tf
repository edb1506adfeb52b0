output "alb_arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}

output "alb_arn_suffix" {
  description = "ARN suffix of the load balancer (the LoadBalancer dimension of AWS/ApplicationELB metrics)."
  value       = aws_lb.this.arn_suffix
}

output "alb_name" {
  description = "Name of the load balancer."
  value       = aws_lb.this.name
}

output "alb_dns_name" {
  description = "DNS name of the load balancer (point a CNAME or an alias record at it)."
  value       = aws_lb.this.dns_name
}

output "alb_zone_id" {
  description = "Route 53 hosted zone ID of the load balancer (for alias records)."
  value       = aws_lb.this.zone_id
}

output "target_group_arn" {
  description = "ARN of the target group. Known only once the HTTPS listener forwards to it, as an ECS service requires."
  value       = aws_lb_target_group.this.arn

  # ECS refuses a target group that no load balancer uses yet.
  depends_on = [aws_lb_listener.https]
}

output "target_group_arn_suffix" {
  description = "ARN suffix of the target group (the TargetGroup dimension of AWS/ApplicationELB metrics)."
  value       = aws_lb_target_group.this.arn_suffix
}

output "target_group_name" {
  description = "Name of the target group."
  value       = aws_lb_target_group.this.name
}

output "https_listener_arn" {
  description = "ARN of the HTTPS listener (add listener rules to it)."
  value       = aws_lb_listener.https.arn
}

output "http_listener_arn" {
  description = "ARN of the HTTP listener (redirects to HTTPS)."
  value       = aws_lb_listener.http.arn
}

output "load_balancer" {
  description = "The load balancer (all attributes of the aws_lb resource)."
  value       = aws_lb.this
}

output "target_group" {
  description = "The target group (all attributes of the aws_lb_target_group resource)."
  value       = aws_lb_target_group.this
}

output "listeners" {
  description = "The listeners (all attributes of each aws_lb_listener), by protocol: https, http."
  value = {
    https = aws_lb_listener.https
    http  = aws_lb_listener.http
  }
}

output "waf_web_acl_arn" {
  description = "ARN of the WAF web ACL associated with the load balancer, or null."
  value       = one(aws_wafv2_web_acl_association.this[*].web_acl_arn)
}

output "internal_paths_rule_ids" {
  description = "The listener rule that keeps /metrics and /ready off the internet (empty when exposed)."
  value       = aws_lb_listener_rule.internal_paths[*].id
}
