// Placeholder until this page's part lands.
export function LoginPage() {
  return <main id="main"><h1>Log in</h1></main>;
}
